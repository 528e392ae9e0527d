"""What a person sees while a command runs: genrec's own lines on the terminal, everything Ray prints in a log file.

Ray writes to the driver's sys.stdout and sys.stderr: its loggers (Ray Data's execution plans, Train, Tune, Serve),
Python warnings, and every line a worker prints, which Ray forwards with a "(name pid=...)" prefix. Under
`console()` both streams are routers: every line goes to the command's log file as printed, and the terminal gets
genrec's own lines only: those the driver says with `say()`, and those a worker says with `worker_say()`, which carry
TAG so that the router finds them among the forwarded ones. `verbose` sends everything to the terminal as well.
A worker's progress within an epoch (`worker_progress()`) is drawn in place on a terminal and left out of a pipe
(a job log, CI), where the epoch's own line follows it anyway.

Routing the streams, not Ray's handlers one by one, is what keeps it complete: a logger added later (Serve's, on
its first deployment), Tune's tables and warnings all write to whatever sys.stdout/sys.stderr are when they write.
Handlers that bound the streams earlier (Ray's, at import) are pointed at the routers for the command's duration.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path

TAG = "[genrec] "  # a worker's own line, found by the driver among Ray's forwarded ones
LOG_NAME = "genrec.log"  # a run's (or sweep's) log, in its folder
LIVE = "[genrec~] "  # a worker's progress within an epoch: drawn in place on a terminal, left out of a pipe
DEDUP_EXEMPT = r"\[genrec~?\] "  # TAG and LIVE, as a regular expression
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_active: "Console | None" = None


def say(line: str = "", err: bool = False) -> None:
    """One line of genrec's own output: the terminal (and the log) under a console; tagged for the driver in a Ray
    actor (a Tune trial, a Train worker); else plain stdout/stderr."""
    if _active is not None:
        _active.own(line, err)
    elif in_ray_actor():
        worker_say(line)
    else:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def in_ray_actor() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray and ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None)


def worker_say(line: str) -> None:
    """One line of genrec's own output from a Ray worker: to its stdout, tagged, which Ray forwards to the driver once.
    Not print(): Ray Train patches print on its workers to send each line through the logging handlers as well
    (RAY_TRAIN_ENABLE_PRINT_PATCH), and every epoch line reached the terminal twice."""
    sys.stdout.write(TAG + line + "\n")
    sys.stdout.flush()


def worker_progress(line: str) -> None:
    """A worker's progress within an epoch, replaced by the next one on a terminal."""
    sys.stdout.write(LIVE + line + "\n")
    sys.stdout.flush()


def progress_bar(done: int, total: int, width: int = 20) -> str:
    """`[########------------]  40%` for done of total (clamped)."""
    share = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
    filled = int(round(share * width))
    return f"[{'#' * filled}{'-' * (width - filled)}] {share:4.0%}"


def eta(seconds: float) -> str:
    """Seconds as m:ss (h:mm:ss past an hour)."""
    s = max(int(round(seconds)), 0)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain aligned text table (what a person reads in a terminal or a job log), said as genrec's own lines."""
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    say("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    say("  ".join("-" * w for w in widths))
    for row in cells:
        say("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


class Terminal:
    """The real streams, with at most one progress line drawn in place (on a TTY only)."""

    def __init__(self, out, err):
        self.out, self.err = out, err
        isatty = getattr(out, "isatty", None)
        self.tty = bool(isatty and isatty())
        self._live = False
        self._lock = threading.RLock()

    def line(self, text: str, err: bool = False) -> None:
        with self._lock:
            self._clear()
            stream = self.err if err else self.out
            stream.write(text + "\n")
            stream.flush()

    def progress(self, text: str) -> None:
        if not self.tty:
            return
        with self._lock:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
            self._live = True

    def _clear(self) -> None:
        if self._live:
            self.out.write("\r\x1b[2K")
            self._live = False


class Console:
    """The routing of one command: its log (in memory until the command names the file), the terminal, verbosity."""

    def __init__(self, terminal: Terminal, verbose: bool):
        self.terminal, self.verbose = terminal, verbose
        self.log: io.TextIOBase = io.StringIO()
        self.log_path: Path | None = None
        self._lock = threading.RLock()

    def record(self, text: str) -> None:
        with self._lock:
            self.log.write(text)

    def own(self, line: str, err: bool = False) -> None:
        """A line of genrec's: the terminal and the log."""
        self.record(line + "\n")
        self.terminal.line(line, err)

    def route(self, line: str, err: bool) -> None:
        """A line written to sys.stdout/sys.stderr (already in the log): genrec's own reach the terminal."""
        plain = ANSI.sub("", line)
        if TAG in plain:
            self.terminal.line(plain.split(TAG, 1)[1])
        elif LIVE in plain:
            self.terminal.progress(plain.split(LIVE, 1)[1])
        elif self.verbose:
            self.terminal.line(line, err)

    def keep_log(self, path: str | Path) -> Path:
        """Write the log to `path` from now on (what was routed so far first; appended to an existing log, as a
        resumed run's), and say where it is."""
        path = Path(path)
        with self._lock:
            if path != self.log_path:
                path.parent.mkdir(parents=True, exist_ok=True)
                if self.log_path is None:
                    so_far = self.log.getvalue()
                else:  # a file already: carry its text over to the new place
                    self.log.flush()
                    so_far = Path(self.log_path).read_text(errors="replace")
                    self.log.close()
                    Path(self.log_path).unlink()
                self.log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
                self.log.write(so_far)
                self.log.flush()
                self.log_path = path
        self.own(f"log: {path}  (Ray's output; --verbose shows it here)")
        return path

    def close(self) -> None:
        with self._lock:
            if self.log_path is not None:
                self.log.close()


class Router(io.TextIOBase):
    """sys.stdout or sys.stderr under a console: whole lines to the console (each thread's partial line kept apart,
    since print() writes a line and its newline in two calls), everything to the log as written."""

    def __init__(self, console: Console, err: bool, original):
        super().__init__()
        self.console, self.err, self.original = console, err, original
        self._partial: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # a library that wants the descriptor (faulthandler, a subprocess) gets the real one
        return self.original.fileno()

    def write(self, text: str) -> int:
        self.console.record(text)
        me = threading.get_ident()
        with self._lock:
            *lines, self._partial[me] = (self._partial.get(me, "") + text).split("\n")
        for line in lines:
            self.console.route(line, self.err)
        return len(text)

    def flush(self) -> None:
        with self.console._lock:
            self.console.log.flush()

    def drain(self) -> None:
        with self._lock:
            rest, self._partial = [p for p in self._partial.values() if p], {}
        for line in rest:
            self.console.route(line, self.err)


def _stream_handlers():
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def _repoint(streams: dict) -> None:
    """Handlers writing to a key of `streams` write to its value instead."""
    for handler in _stream_handlers():
        if id(handler.stream) in streams:
            handler.setStream(streams[id(handler.stream)])


@contextmanager
def console(verbose: bool = False):
    """Route the process's output for one command (see the module's doc); nested use joins the outer console.
    A Ray started during the command is shut down before the streams are given back, so its last words are logged."""
    global _active
    if _active is not None:
        yield _active
        return
    # Ray merges alike lines of several processes ("[repeated 2x across cluster]", up to 5 s late): genrec's own
    # lines (two trials' epoch lines look alike) must come through as said. Read when Ray is first imported.
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", DEDUP_EXEMPT)
    ray = sys.modules.get("ray")
    ray_before = bool(ray and ray.is_initialized())
    saved = sys.stdout, sys.stderr
    current = Console(Terminal(*saved), verbose)
    routers = Router(current, False, saved[0]), Router(current, True, saved[1])
    sys.stdout, sys.stderr = routers
    _repoint({id(saved[0]): routers[0], id(saved[1]): routers[1]})
    _active = current
    try:
        yield current
    except BaseException:
        current.record(traceback.format_exc())  # the terminal gets one line (genrec.entrypoint); the log all of it
        raise
    finally:
        try:
            ray = sys.modules.get("ray")
            if ray is not None and not ray_before and ray.is_initialized():
                ray.shutdown()
        finally:
            for r in routers:
                r.drain()
            if current.log_path is None and current.log.getvalue():  # a command that never named its log's place
                current.keep_log(Path(tempfile.gettempdir()) / f"genrec-{os.getpid()}.log")
            sys.stdout, sys.stderr = saved
            _repoint({id(routers[0]): saved[0], id(routers[1]): saved[1]})
            _active = None
            current.close()


def log_file(store, *where: str) -> Path:
    """A command's log file: under the storage root when it is a local folder, else under storage.cache (a URI
    root's local copies) at the same place."""
    return Path(store.path(*where)) if not store.remote else Path(store.cache) / "logs" / os.path.join(*where)


def keep_log(store, *where: str) -> Path | None:
    """Under a console, write the command's log to `where` in the storage (see log_file) and say so."""
    return _active.keep_log(log_file(store, *where)) if _active is not None else None

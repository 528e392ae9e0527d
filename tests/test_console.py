"""genrec.console: genrec's own lines reach the terminal, Ray's output only the log file (unless --verbose), a
progress line is drawn in place on a terminal and left out of a pipe. No Ray here: Ray's channels are what they are
seen to be (a forwarded worker line is its text after a colored "(name pid=N)" prefix, written to sys.stdout; a
logger's handler bound to sys.stderr at import). The same routing through real Ray is checked on the Jobs test's
run (tests/test_jobs.py)."""

import io
import logging
import sys

import pytest

from genrec.console import LIVE, TAG, Console, Router, Terminal, console, eta, progress_bar, say
from genrec.train import epoch_progress, run_line

FORWARDED = "\x1b[36m(RayTrainWorker pid=4242)\x1b[0m "  # how Ray's driver prints a worker's line


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_the_time_left_and_the_epoch_line_by_hand():
    assert progress_bar(5, 20) == "[#####---------------]  25%"
    assert progress_bar(0, 0) == "[--------------------]   0%"
    assert progress_bar(30, 20, width=4) == "[####] 100%"  # clamped
    assert eta(75) == "1:15" and eta(3725) == "1:02:05" and eta(-3) == "0:00"
    # 50 of 200 steps in 5 s: 2,000 events/s (10,000 events), 150 steps left at 0.1 s each = 15 s.
    line = epoch_progress(3, 10, 50, 200, 10_000.0, 5.0, [{"valid_ndcg@10": 0.1234}], "valid_ndcg@10")
    assert line == "epoch 3/10 [#####---------------]  25%  2,000 events/s  ETA 0:15  last valid_ndcg@10 0.1234"
    assert epoch_progress(1, 10, 0, 200, 0.0, 0.5, [], "valid_ndcg@10") == \
        "epoch 1/10 [--------------------]   0%  0 events/s"


def test_a_trials_one_line():
    history = [{"epoch": 1, "valid_ndcg@10": 0.05, "wall_time_s": 10.0},
               {"epoch": 2, "valid_ndcg@10": 0.09, "wall_time_s": 20.0},
               {"epoch": 3, "valid_ndcg@10": 0.08, "wall_time_s": 30.4, "popularity_valid_ndcg@10": 0.0312,
                "end": "early stopping"}]
    assert run_line("t1", history, "valid_ndcg@10") == \
        "t1: 3 epochs (early stopping), kept epoch 2: valid_ndcg@10 0.0900 (popularity 0.0312), 30 s"
    assert run_line("t1", [{"epoch": 1, "wall_time_s": 5.0}], "valid_ndcg@10") == \
        "t1: 1 epochs (stopped), no validation figure, 5 s"


def routed(verbose: bool = False, tty: bool = False):
    out, err = (FakeTTY() if tty else io.StringIO()), io.StringIO()
    c = Console(Terminal(out, err), verbose)
    return c, Router(c, False, out), Router(c, True, err), out, err


def test_a_workers_tagged_line_reaches_the_terminal_and_rays_lines_only_the_log():
    c, stdout, stderr, out, err = routed()
    stdout.write(FORWARDED + TAG + "epoch 1/3: loss 7.1\n")
    stdout.write(FORWARDED + "Registered dataset logger for dataset train_1\n")
    stderr.write("2026-12-05 WARNING worker.py:123 -- a Ray warning\n")
    stdout.write(FORWARDED + TAG + "resumed from checkpoint_000001")  # a line written in two calls, as print does
    stdout.write("\n")
    assert out.getvalue() == "epoch 1/3: loss 7.1\nresumed from checkpoint_000001\n" and err.getvalue() == ""
    log = c.log.getvalue()
    assert "Registered dataset logger" in log and "a Ray warning" in log and "(RayTrainWorker pid=4242)" in log


def test_verbose_shows_everything_once():
    c, stdout, stderr, out, err = routed(verbose=True)
    stdout.write(FORWARDED + TAG + "epoch 1/3: loss 7.1\n" + FORWARDED + "Execution plan ...\n")
    stderr.write("a Ray warning\n")
    assert out.getvalue() == f"epoch 1/3: loss 7.1\n{FORWARDED}Execution plan ...\n"
    assert err.getvalue() == "a Ray warning\n"


def test_progress_is_drawn_in_place_on_a_terminal_and_left_out_of_a_pipe():
    c, stdout, _, out, _ = routed(tty=True)
    stdout.write(FORWARDED + LIVE + "epoch 1/3 [##--]  50%\n")
    stdout.write(FORWARDED + LIVE + "epoch 1/3 [####] 100%\n")
    stdout.write(FORWARDED + TAG + "epoch 1/3: loss 7.1\n")
    assert out.getvalue() == ("\r\x1b[2Kepoch 1/3 [##--]  50%" "\r\x1b[2Kepoch 1/3 [####] 100%"
                              "\r\x1b[2Kepoch 1/3: loss 7.1\n")
    c, stdout, _, out, _ = routed(tty=False)
    stdout.write(FORWARDED + LIVE + "epoch 1/3 [##--]  50%\n")
    stdout.write(FORWARDED + TAG + "epoch 1/3: loss 7.1\n")
    assert out.getvalue() == "epoch 1/3: loss 7.1\n" and "[##--]" in c.log.getvalue()  # the log keeps each


def test_a_command_under_the_console(tmp_path, capsys):
    """What the CLI does around a command: Ray's loggers (bound to stderr before it started), warnings and forwarded
    lines (and anything written to stderr at the time, as warnings are) go to the log file, whose path is said first; genrec's lines reach the terminal; the streams and handlers
    are given back; an error's traceback stays in the log."""
    logger = logging.getLogger("test_console.ray_like")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        path = tmp_path / "runs" / "r1" / "genrec.log"
        path.parent.mkdir(parents=True)
        path.write_text("an earlier invocation's log\n")  # a resumed run's log goes on
        with pytest.raises(RuntimeError, match="boom"):
            with console() as c:
                print("said before the log's place was known")  # kept in memory, then written to the file
                assert c.keep_log(path) == path
                say("training 2m on 1 workers")
                print(FORWARDED + TAG + "epoch 1/2: loss 7.0")
                print(FORWARDED + "(Ray Data) Execution plan of Dataset train_1")
                logger.warning("Ray Train: a warning")
                sys.stderr.write("a deprecated argument\n")  # as warnings.showwarning writes, to stderr at the time
                say("an error said to a person", err=True)
                raise RuntimeError("boom")
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"log: {path}  (Ray's output; --verbose shows it here)",
                                    "training 2m on 1 workers", "epoch 1/2: loss 7.0"], out
        assert err == "an error said to a person\n", err
        log = path.read_text()
        for text in ("an earlier invocation's log", "said before the log's place was known", "Execution plan",
                     "Ray Train: a warning", "a deprecated argument", "epoch 1/2: loss 7.0", "Traceback",
                     "RuntimeError: boom"):
            assert text in log, text
        assert log.index("an earlier invocation's log") < log.index("said before the log's place was known")
        assert handler.stream is sys.stderr  # given back
        print("after")
        assert capsys.readouterr().out == "after\n"
    finally:
        logger.removeHandler(handler)


def test_without_a_console_say_prints_plainly(capsys):
    say("a line")
    say("an error", err=True)
    assert capsys.readouterr() == ("a line\n", "an error\n")


def test_a_log_whose_place_was_never_named_is_kept_and_said(capsys):
    import os
    import tempfile
    from pathlib import Path

    path = Path(tempfile.gettempdir()) / f"genrec-{os.getpid()}.log"
    path.unlink(missing_ok=True)
    with console():
        print("(pid=9) a line of Ray's")
    assert capsys.readouterr().out == f"log: {path}  (Ray's output; --verbose shows it here)\n"
    assert "a line of Ray's" in path.read_text()
    path.unlink()

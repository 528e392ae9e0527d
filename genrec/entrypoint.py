"""The command-line runner shared by `genrec` (genrec.cli), trainers/ and tuning/: config flags, then the work, then
one line for an error a person can act on.

Entrypoints call into the core and never back: trainers/ and tuning/ import this module, not genrec.cli (which
imports them).
"""

from __future__ import annotations

import argparse
import sys

from genrec.config import load_config
from genrec.console import console
from genrec.errors import GenrecError

# What is said in one line, never as a traceback: every genrec error (the exit code is the error's), a path that is
# not there (2), Ctrl-C outside the places that turn it into genrec.errors.Interrupted (130).
EXPLAINED = (GenrecError, FileNotFoundError, KeyboardInterrupt)


def explain(exc: BaseException) -> int:
    """Print one line for an EXPLAINED error on stderr and return the command's exit code."""
    if isinstance(exc, KeyboardInterrupt):
        code, label = 130, "interrupted"
    elif isinstance(exc, GenrecError):
        code, label = exc.exit_code, exc.label
    else:
        code, label = 2, "error"
    print(f"{label}: {exc}" if str(exc) else label, file=sys.stderr)
    return code


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="deployment YAML (default: built-in local defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, e.g. --set train.workers=4 (repeatable)")


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    """`--verbose`, on the commands that run Ray: they print genrec's own lines and keep Ray's output in a log file
    (genrec.console), whose path they print."""
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output live too (its logs, Ray Data plans, Tune and Serve messages, worker "
                        "output); it always goes to the command's log file, whose path is printed")
    p.set_defaults(console=True)


def run_command(work, args: argparse.Namespace) -> int:
    """work() under a console when the command has --verbose (one that runs Ray), then one line for an EXPLAINED
    error (the log keeps its traceback)."""
    try:
        if getattr(args, "console", False):
            with console(args.verbose):
                return work()
        return work()
    except EXPLAINED as exc:
        return explain(exc)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Flags of a training or sweep run: the config flags plus a run name, a shard rebuild and --verbose."""
    add_config_args(p)
    add_verbose_arg(p)
    p.add_argument("--name", default=None, help="run name (default: derived from the config name and the time)")
    p.add_argument("--rebuild-shards", action="store_true", help="rebuild the shards even if they exist")


RESUME_HELP = {"SWEEP": "finish a stopped sweep: its folder or name (finished trials kept, the rest rerun)",
               "RUN": "continue a stopped run by its name, from its last epoch's checkpoint (a different "
                      "train.workers restarts the optimizer state from the consolidated weights)"}


def add_resume_arg(p: argparse.ArgumentParser, what: str = "SWEEP") -> None:
    p.add_argument("--resume", default=None, metavar=what, help=RESUME_HELP[what])


def run_entrypoint(prog: str, doc: str, run, argv: list[str] | None = None, resume: str | None = None) -> int:
    """`python -m trainers.pretrain` / `python -m tuning.sweep`: config flags, then run(cfg, name, rebuild).
    resume: "RUN" or "SWEEP" when the entrypoint takes `--resume`."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p)
    if resume:
        add_resume_arg(p, resume)
    args = p.parse_args(argv)

    def work() -> int:
        extra = {"resume": args.resume} if resume else {}
        run(load_config(args.config, args.overrides), args.name, args.rebuild_shards, **extra)
        return 0

    return run_command(work, args)

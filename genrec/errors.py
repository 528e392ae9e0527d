"""One base for every error genrec explains to a person, so the CLI and the entrypoints catch one type.

Each message names the file, row, field or config key at fault and says what to do. `exit_code` is what a command
exits with: 2 for input that cannot be used (a config key, a data file, a checkpoint), 1 for work that failed for the
reason given (a training run Ray Train gave up on), 130 for work the user stopped (Ctrl-C), as a shell does for
SIGINT. Each subclass also keeps the built-in type it always had (ValueError, RuntimeError), so existing handlers
still catch it.
"""

from __future__ import annotations


class GenrecError(Exception):
    exit_code = 2
    label = "error"  # how the CLI prefixes the one line it prints


class Interrupted(GenrecError):
    """Work stopped by the user (Ctrl-C) before it finished: its state is saved, nothing is published from it; the
    message says how to go on. The CLI entrypoints print it (or a bare KeyboardInterrupt) as one line and exit 130,
    as a shell does for SIGINT. (Ray Train's own SIGINT handler stops a training run; genrec.train.fit then raises
    this, naming the last whole checkpoint.)"""
    exit_code = 130
    label = "interrupted"


class ConfigError(GenrecError, ValueError):
    """A config file or override that cannot be used; the message names the file and the dotted key. (Here rather
    than in genrec.config so that genrec.storage, which the config's storage section opens, needs no config.)"""


class SweepFailed(GenrecError, RuntimeError):
    """A sweep none of whose trials can be served: every one failed or reported no validation figure (the message
    lists each trial's error). Nothing is written."""
    exit_code = 1


class ProbeError(GenrecError, ValueError):
    """A probe that can tell nothing about this checkpoint or its catalogue (the message says what is missing)."""

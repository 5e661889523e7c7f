"""How dogbreed talks on a terminal: INFO lines to stdout as they are, warnings and errors to
stderr prefixed (``warning: ...``). Library modules only call ``logging.getLogger(__name__)``; the
entry points (the CLI, tuning's worker processes) set this up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class _StdoutInfo(logging.Handler):
    data_on_stdout = False  # a command printing data (``--json``) keeps stdout for it: INFO goes to stderr

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.exc_info:  # only with --verbose: tracebacks are for debugging, not for users
            msg += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            sys.stderr.write(f"{record.levelname.lower()}: {msg}\n")
        else:
            out = sys.stderr if self.data_on_stdout else sys.stdout
            out.write(msg + "\n")
            out.flush()


# Libraries that narrate at INFO (where credentials and endpoints were found): --verbose shows them.
CHATTY = ("botocore", "aiobotocore", "s3fs", "fsspec")


def stdout_for_data() -> None:
    """From now on INFO lines go to stderr, leaving stdout to the data a command prints (its JSON)."""
    _StdoutInfo.data_on_stdout = True


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    root.handlers[:] = [_StdoutInfo()]
    _StdoutInfo.data_on_stdout = False  # each command says again whether its stdout is data
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        quiet(CHATTY)


def quiet(names: Iterable[str]) -> None:
    """Warnings and errors only from these loggers (a tuning trial's epochs are not news)."""
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def quieted(names: Iterable[str]) -> Iterator[None]:
    """:func:`quiet` for the block, then each logger's level as it was."""
    levels = {name: logging.getLogger(name).level for name in names}
    quiet(levels)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

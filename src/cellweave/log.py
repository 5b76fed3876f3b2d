"""Messages of the library go through :mod:`logging` under the ``cellweave`` logger.

The library never prints: it logs (``logging.getLogger(__name__)``), so a notebook or a pipeline routes the
messages where it wants, e.g. ``logging.basicConfig(level="INFO")`` or
``logging.getLogger("cellweave").setLevel("DEBUG")``. Progress bars (tqdm) are separate and have their own
``progress=`` switches. The ``cellweave`` command installs :func:`cli_logging` for the length of one command.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ROOT = "cellweave"


class _ConsoleHandler(logging.Handler):
    """Info and debug lines to stdout (what a command reports), warnings and errors to stderr.

    The streams are looked up at each message (not bound when the handler is made), so redirections made after
    start-up (pytest's capture, a notebook's) are honoured.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                sys.stderr.write(f"cellweave: {record.levelname.lower()}: {text}\n")
                sys.stderr.flush()
            else:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def verbosity_level(verbose: int = 0, quiet: int = 0) -> int:
    """The log level of ``-v`` / ``-q`` counts: INFO by default, DEBUG with ``-v``, WARNING with ``-q``, ERROR
    with ``-qq``."""
    steps = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
    return steps[max(0, min(len(steps) - 1, 1 - verbose + quiet))]


@contextmanager
def cli_logging(level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Route the ``cellweave`` logger to the console at ``level`` while the block runs, then restore it."""
    logger = logging.getLogger(ROOT)
    handler = _ConsoleHandler(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

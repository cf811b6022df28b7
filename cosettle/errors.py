"""User-facing errors and the CLI wrapper that turns them into one line + exit status 2.

Every bad input a user can cause (missing file, malformed points, unknown backend, weights missing
offline, ...) raises :class:`UserError`. CLIs wrap their ``main`` with :func:`cli_entry`, which prints
``error: <what> (<fix>)`` to stderr and exits with status 2 -- no traceback, no partial output.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input or environment, with a hint on how to fix it."""

    def __init__(self, message: str, fix: str | None = None):
        self.message = message.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message
        if self.fix:
            text += f" -- {self.fix}"
        return " ".join(text.split())  # guarantee a single line


class WeightsUnavailable(UserError):
    """Pretrained weights cannot be obtained (offline, missing file, wrong layout)."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., None]:
    """Decorate a CLI ``main(argv=None)``: UserError -> one line on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            rc = main(argv)
        except UserError as err:
            logging.getLogger("cosettle").debug("user error", exc_info=True)
            print(f"error: {err.one_line()}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("error: interrupted -- re-run the same command to resume from the last checkpoint",
                  file=sys.stderr)
            sys.exit(130)
        sys.exit(rc or 0)

    return wrapper

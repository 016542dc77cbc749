"""Errors a user can cause, and the one-line exit they get."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (bad params, missing data, unreachable server).

    The message names the problem and the fix; it is printed as one line with
    no traceback and the process exits with code 2. Bugs raise anything else.
    """


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: open runs end as KILLED


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn UserError into one line on stderr and exit 2, a signal into exit 130."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)

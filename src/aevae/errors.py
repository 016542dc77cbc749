"""Errors a user can cause, and the one-line exit they get."""

from __future__ import annotations

import os
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


def _end_with_parent() -> None:
    """SIGTERM this process when the one that started it dies (Linux: PR_SET_PDEATHSIG).

    `dvc repro` starts a stage and waits; killed itself, it would leave the stage (and its Ray instance)
    training alone, writing models/ while a rerun starts a second copy in the same folders. With this the
    stage stops as on any SIGTERM: runs end KILLED, checkpoints stay, the rerun resumes. Best effort.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the stage outlives a killed parent, as before
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def end_child_with_parent() -> None:
    """subprocess's preexec_fn for a child of this process: SIGTERM the child when this process dies, even by
    SIGKILL, which no handler sees. Without it a killed `make retrain` leaves its `dvc repro` (and the stage
    under it) training alone, holding DVC's lock against the next run."""
    _end_with_parent()


def _params_unchanged() -> None:
    """Fail (UserError) when params.yaml changed while main() ran: see aevae.config.check_unchanged."""
    from aevae.config import check_unchanged  # config imports this module

    check_unchanged()


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage's main(); turn UserError into one line on stderr and exit 2, a signal into exit 130.
    A params file main() read that changed before it returned is such an error (exit 2: DVC records nothing).
    The stage also ends (as on SIGTERM) when the process that started it, e.g. `dvc repro`, is killed."""
    signal.signal(signal.SIGTERM, _interrupt)
    _end_with_parent()
    try:
        main()
        _params_unchanged()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr, flush=True)
        sys.exit(130)

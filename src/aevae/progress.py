"""Progress lines with an ETA, instead of Ray's log noise or a silent stage.

Every stage that can run longer than ~10 s prints a line at least every few
seconds: the train stage one per model per epoch (SweepProgress), the others
one for the stage's unit of work (Progress: batches, models, steps). The
interval comes from AEVAE_PROGRESS_EVERY_S when set (tests lower it).
"""

from __future__ import annotations

import math
import os
import sys
import time

from aevae.config import RunSpec
from aevae.errors import UserError

PROGRESS_ENV = "AEVAE_PROGRESS_EVERY_S"


def every_s(default: float) -> float:
    """Seconds between progress lines: AEVAE_PROGRESS_EVERY_S when set, else `default`; UserError if not a number."""
    value = os.environ.get(PROGRESS_ENV, "").strip()
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        raise UserError(f"{PROGRESS_ENV}={value!r} is not a number of seconds; set it to e.g. 10 or unset it") from None


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "ETA    ?"
    return f"ETA {seconds:4.0f}s" if seconds < 600 else f"ETA {seconds / 60:4.0f}min"


def say(stage: str, text: str, stream=None) -> None:
    """One `[stage] text` line, flushed: what a stage is doing between its counted steps."""
    print(f"[{stage}] {text}", file=stream or sys.stdout, flush=True)


class Progress:
    """One stage's work counted in units: `[stage] done/total unit (pct)  note  ETA`.

    A line at the first update, then at most one per `every` seconds, and at the end; the ETA extrapolates
    the rate since the first update ("?" until there is one; an upper bound where the work may stop early,
    e.g. early stopping).
    """

    def __init__(self, stage: str, total: int, unit: str, stream=sys.stdout, every: float | None = None):
        self.stage, self.total, self.unit, self.stream = stage, max(1, int(total)), unit, stream
        self.every = every_s(5.0) if every is None else every
        self.t0 = time.monotonic()
        self.last = -math.inf
        self.first: tuple[float, float] | None = None  # (time, done) of the first update

    def line(self, text: str) -> None:
        say(self.stage, text, self.stream)

    def update(self, done: float, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and done < self.total and now - self.last < self.every:
            return
        self.last = now
        if self.first is None:  # the rate is measured from here: start-up (imports, loading, Ray) is not work
            self.first = (now, done)
        t_first, done_first = self.first
        eta = (now - t_first) / (done - done_first) * (self.total - done) if done > done_first else math.inf
        note = f"  {note}" if note else ""
        self.line(f"{done:.0f}/{self.total} {self.unit} ({100 * done / self.total:3.0f}%){note}  {_eta(eta)}")

    def done(self, text: str) -> None:
        self.line(f"{text} in {time.monotonic() - self.t0:.1f}s")


class SweepProgress:
    """`[model] epoch e/total ... ETA` lines; `epochs` maps a name to its planned epochs (fewer than
    train.epochs when train.max_steps ends training first: aevae.core.training.planned_epochs)."""

    def __init__(
        self, specs: list[RunSpec], stream=sys.stdout, every: float | None = None, epochs: dict[str, int] | None = None
    ):
        self.every_s = every_s(3.0) if every is None else every
        self.epochs = {s.name: (epochs or {}).get(s.name, s.train.epochs) for s in specs}
        self.width = max(len(n) for n in self.epochs)
        self.stream = stream
        self.last_line = {name: 0.0 for name in self.epochs}
        print(
            f"training {len(specs)} model{'s' if len(specs) != 1 else ''}: {', '.join(self.epochs)}",
            file=stream,
            flush=True,
        )

    def _line(self, name: str, text: str) -> None:
        print(f"[{name:<{self.width}}] {text}", file=self.stream, flush=True)

    def epoch(self, name: str, rec: dict) -> None:
        total = self.epochs[name]
        now = time.monotonic()
        if rec["epoch"] not in (1, total) and now - self.last_line[name] < self.every_s:
            return  # a line every few seconds per model is enough to follow it
        self.last_line[name] = now
        eta = rec["seconds"] * (total - rec["epoch"])
        kl = f"  kl {rec['train/kl_nats_per_image']:6.2f} nats" if rec["train/kl_nats_per_image"] else ""
        self._line(
            name,
            f"epoch {rec['epoch']:>3}/{total}  loss {rec['train/loss_per_image']:8.2f}"
            f"  recon {rec['train/recon_per_image']:8.2f}{kl}  val {rec['val/loss_per_image']:8.2f}"
            f"  ETA {eta:4.0f}s",
        )

    def done(self, name: str, epochs_run: int, seconds: float) -> None:
        resumed = self.epochs[name] - epochs_run
        note = f" (resumed: {resumed} epochs from checkpoint)" if resumed else ""
        self._line(name, f"done in {seconds:.1f}s, {epochs_run} epochs trained{note}")

    def failed(self, name: str, error: str) -> None:
        self._line(name, f"FAILED: {error}")

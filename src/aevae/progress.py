"""One line per model per epoch, with an ETA, instead of Ray's log noise."""

from __future__ import annotations

import sys
import time

from aevae.config import RunSpec


class SweepProgress:
    def __init__(self, specs: list[RunSpec], stream=sys.stdout, every_s: float = 3.0):
        self.every_s = every_s
        self.epochs = {s.name: s.train.epochs for s in specs}
        self.width = max(len(n) for n in self.epochs)
        self.stream = stream
        self.last_line = {name: 0.0 for name in self.epochs}
        print(f"training {len(specs)} models: {', '.join(self.epochs)}", file=stream, flush=True)

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
        self._line(name, f"epoch {rec['epoch']:>3}/{total}  loss {rec['train/loss_per_image']:8.2f}"
                         f"  recon {rec['train/recon_per_image']:8.2f}{kl}  val {rec['val/loss_per_image']:8.2f}"
                         f"  ETA {eta:4.0f}s")

    def done(self, name: str, epochs_run: int, seconds: float) -> None:
        resumed = self.epochs[name] - epochs_run
        note = f" (resumed: {resumed} epochs from checkpoint)" if resumed else ""
        self._line(name, f"done in {seconds:.1f}s, {epochs_run} epochs trained{note}")

    def failed(self, name: str, error: str) -> None:
        self._line(name, f"FAILED: {error}")

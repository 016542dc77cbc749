"""Seeded random streams: every random draw of the pipeline is a pure function of (seed, stream).

A generator per stream, rather than one global state, keeps draws independent of each other: a
resumed training run needs no saved state for its batch order, and changing how many prior
samples evaluation draws does not move its importance-weighted NLL samples.
"""

from __future__ import annotations

import torch

# Streams of one seed are seeded `seed * stride + stream`; a prime stride keeps seeds' streams apart.
_EPOCH_STRIDE = 100_003  # training loops: one stream per epoch
_PURPOSE_STRIDE = 1_000_003  # evaluation: one stream per purpose (1: IW-NLL samples, 2: prior samples)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """CPU generator for one epoch's batch order (and augmentation) of a training loop seeded `seed`.

    Epochs count from 0. Never raises.
    """
    return torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch)


def purpose_generator(seed: int, purpose: int) -> torch.Generator:
    """CPU generator for one evaluation draw (`purpose`: 1 the IW-NLL samples, 2 the prior samples).

    Never raises.
    """
    return torch.Generator().manual_seed(seed * _PURPOSE_STRIDE + purpose)

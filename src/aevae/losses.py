"""Loss terms with stated units.

Reconstruction is summed over the 784 pixels of an image (BCE: nats under a
Bernoulli decoder; MSE: squared error) and averaged over the batch. KL to
N(0, I) is analytic, in nats per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    total: torch.Tensor  # what is minimised: recon + weight * KL (after free bits)
    recon: torch.Tensor  # batch mean of per-image reconstruction error
    kl: torch.Tensor  # batch mean of per-image KL in nats (0 for the AE)


def recon_per_image(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,) reconstruction error of each image, summed over pixels."""
    logits = logits.float()  # sums over 784 pixels lose precision in bf16
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        err = (torch.sigmoid(logits) - x) ** 2
    return err.flatten(1).sum(1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, latent) KL(N(mu, sigma^2) || N(0, 1)) per dimension, nats."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_weight(beta: float, epoch: int, warmup_epochs: int) -> float:
    """Linear warm-up: 0 at epoch 0, beta from epoch `warmup_epochs` on."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch / warmup_epochs)

"""Loss terms with stated units.

Reconstruction is summed over the C*H*W pixels of an image (784 for MNIST) (BCE: nats
under a Bernoulli decoder; MSE: squared error) and averaged over the batch. KL
to N(0, I) is analytic, in nats per image: the one place the formula is written
(the model's loss and metrics.kl_to_prior both call kl_per_dim). The KL weight
and its warm-up schedule belong to the training loop (training.kl_weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class LossTerms:
    total: torch.Tensor  # what is minimised: recon + weight * KL (after free bits)
    recon: torch.Tensor  # batch mean of per-image reconstruction error
    kl: torch.Tensor  # batch mean of per-image KL in nats (0 for the AE)


def recon_per_image(
    logits: torch.Tensor, x: torch.Tensor, kind: str, log_sigma: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) reconstruction error of each image, summed over pixels; float32 at least.

    logits (B, C, H, W) from the decoder, x (B, C, H, W) in [0, 1]. kind "bce": Bernoulli
    cross-entropy in nats per image; "mse": squared error of sigmoid(logits) per image; "gaussian":
    -log N(x; sigmoid(logits), sigma^2) in nats per image, sigma = exp(log_sigma) one learned scalar
    shared by every pixel (sigma-VAE, Rybkin et al. 2021; None: sigma = 1). Never raises for matching shapes.
    """
    logits = logits.float()  # sums over C*H*W pixels (784 on MNIST) lose precision in bf16
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "gaussian":
        return gaussian_nll(torch.sigmoid(logits), x, log_sigma)
    else:
        err = (torch.sigmoid(logits) - x) ** 2
    return err.flatten(1).sum(1)


def gaussian_nll(mean: torch.Tensor, x: torch.Tensor, log_sigma: torch.Tensor | None) -> torch.Tensor:
    """(B,) -log N(x; mean, sigma^2 I) of each image in nats, summed over its pixels; mean, x (B, C, H, W).

    log_sigma: a scalar tensor (one sigma for every pixel) or None for sigma = 1.
    """
    log_sigma = mean.new_zeros(()) if log_sigma is None else log_sigma.float()
    z = (x - mean) * torch.exp(-log_sigma)
    return (0.5 * z.pow(2) + log_sigma + HALF_LOG_2PI).flatten(1).sum(1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B, latent) KL(N(mu, sigma^2) || N(0, 1)) of each latent dimension, nats; sum over dims for per image.

    mu, logvar (B, latent). Computed in float32, or in the inputs' precision when higher (float64 for
    metrics). Source: Kingma & Welling 2014, Auto-Encoding Variational Bayes, appendix B:
    -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    """
    dtype = torch.promote_types(mu.dtype, torch.float32)  # bf16 under autocast loses the small terms
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)

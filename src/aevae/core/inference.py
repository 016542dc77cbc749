"""What people do with a trained autoencoder, on plain arrays: encode, reconstruct, decode, sample.

The registered MLflow model (aevae.ops.pyfunc_model) is a thin shell over these functions, so their
contract is the registry's contract:

- images: float32 (B, C*H*W), each row one (C, H, W) image of the model's `image_shape` flattened
  channel by channel, then row by row (numpy's C order of (C, H, W); MNIST: (B, C*H*W) of 1x28x28),
  pixels in [0, 1] (uint8 pixels divided by 255); outputs are Bernoulli means sigmoid(logits), also
  in [0, 1], in the same layout;
- codes: float32 (B, latent), the latent vectors the decoder takes;
- every function returns a dict of float32 numpy arrays, so a server can send it as JSON.

Errors a caller can make (a wrong width, pixels outside [0, 1], an unknown method) raise ValueError
with the fix in the message; the pyfunc turns them into HTTP 400 answers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from aevae.core.models import AutoEncoder

METHODS = ("encode", "reconstruct", "decode", "sample")
DEFAULT_METHOD = "reconstruct"
DEFAULT_N = 16  # sample: images per call unless the caller says
MAX_SAMPLES = 10_000  # sample: a bound on one call's memory (10k images = 31 MB of float32)

# The latent density `sample` draws from: (n, latent, generator) -> (n, latent) codes.
CodeSampler = Callable[[int, int, torch.Generator], torch.Tensor]


def standard_normal(n: int, latent: int, generator: torch.Generator) -> torch.Tensor:
    """z ~ N(0, I), (n, latent): the VAE's prior (Kingma & Welling 2014, section 3).

    The hook for a fitted latent density (e.g. a Gaussian mixture on the training codes, which suits
    an AE whose codes are not N(0, I)): a CodeSampler with this signature, passed to `sample`.
    """
    return torch.randn(n, latent, generator=generator)


def _rows(x, width: int, what: str) -> torch.Tensor:
    """(B, width) float32 tensor from an array-like, or ValueError naming the expected shape."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] == 0:
        raise ValueError(f"expected {what} as a float32 array of shape (B, {width}) with B >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _images(model: AutoEncoder, x) -> torch.Tensor:
    """(B, C*H*W) pixels in [0, 1] -> (B, C, H, W) tensor of the model's image_shape."""
    c, h, w = model.image_shape
    flat = _rows(x, c * h * w, f"images ({c}x{h}x{w} pixels flattened)")
    if flat.min() < 0.0 or flat.max() > 1.0:
        raise ValueError("image pixels must be in [0, 1]; divide uint8 pixels by 255")
    return flat.reshape(-1, c, h, w)


def _pixels(logits: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) decoder logits -> (B, C*H*W) float32 Bernoulli means in [0, 1]."""
    return torch.sigmoid(logits).flatten(1).numpy().astype(np.float32, copy=False)


@torch.no_grad()
def encode(model: AutoEncoder, images) -> dict[str, np.ndarray]:
    """(B, C*H*W) images -> {"mu": (B, latent)}, plus {"logvar": (B, latent)} for a VAE.

    mu is the AE's code or the VAE's posterior mean; logvar is log sigma^2 of q(z|x), per dimension.
    """
    post = model.encode(_images(model, images))
    out = {"mu": post.mu.numpy()}
    if post.logvar is not None:
        out["logvar"] = post.logvar.numpy()
    return out


@torch.no_grad()
def reconstruct(model: AutoEncoder, images) -> dict[str, np.ndarray]:
    """(B, C*H*W) images -> {"images": (B, C*H*W)}: decoded from the mean code, no sampling noise."""
    return {"images": _pixels(model.decode(model.encode(_images(model, images)).mu))}


@torch.no_grad()
def decode(model: AutoEncoder, codes) -> dict[str, np.ndarray]:
    """(B, latent) codes -> {"images": (B, C*H*W)}."""
    return {"images": _pixels(model.decode(_rows(codes, model.cfg.latent_dim, "codes")))}


@torch.no_grad()
def sample(model: AutoEncoder, n: int, seed: int = 0, codes: CodeSampler = standard_normal) -> dict[str, np.ndarray]:
    """n images decoded from codes drawn from `codes` (the prior N(0, I) by default) -> {"images": (n, C*H*W)}.

    The same seed gives the same images on any machine with the same torch (CPU generator).
    """
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"n must be between 1 and {MAX_SAMPLES}, got {n}")
    generator = torch.Generator().manual_seed(seed)
    return {"images": _pixels(model.decode(codes(n, model.cfg.latent_dim, generator)))}


def run(model: AutoEncoder, method: str, x, n: int = DEFAULT_N, seed: int = 0) -> dict[str, np.ndarray]:
    """One call of the registered model: `method` on `x` (images or codes; ignored by sample)."""
    if method == "encode":
        return encode(model, x)
    if method == "reconstruct":
        return reconstruct(model, x)
    if method == "decode":
        return decode(model, x)
    if method == "sample":
        return sample(model, n, seed)
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")

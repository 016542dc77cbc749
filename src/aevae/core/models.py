"""AutoEncoder and Variational AutoEncoder, built from shared encoder/decoder parts.

Images are (B, C, H, W) floats in [0, 1], their shape `image_shape` = (C, H, W)
given when a model is built (from the prepared manifest, or the saved model's
config). Decoders return logits of exactly that shape; the image is
sigmoid(logits), which keeps BCE numerically stable.
MODEL_KINDS is the registry of model kinds: build_model and the tests read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aevae.config import ModelParams
from aevae.core.losses import LossTerms, kl_per_dim, recon_per_image
from aevae.errors import UserError

EVAL_BATCH = 1024  # images per forward pass outside training (evaluation, scoring): bounds memory

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "linear": nn.Identity,  # makes the linear AE the article compares with PCA
}


def as_images(
    images, device: torch.device | str = "cpu", image_shape: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """uint8 pixels or float images in [0, 1] -> float (N, C, H, W) in [0, 1] on `device`.

    Takes (N, H, W) grey and (N, C, H, W) stacks; flat (N, C*H*W) rows need `image_shape` (C, H, W).
    Raises: ValueError for flat rows without image_shape.
    """
    x = torch.as_tensor(images).to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 2:  # flat (N, C*H*W)
        if image_shape is None:
            raise ValueError("flat (N, C*H*W) images need image_shape (C, H, W) to be reshaped")
        return x.reshape(-1, *image_shape)
    return x.unsqueeze(1) if x.dim() == 3 else x


def _act(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers through `sizes`, with the activation between (not after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_act(activation))
    return nn.Sequential(*layers)


# model.channels: auto, by the image's shorter side: two stride-2 layers below 64 px (28 -> 7, 32 -> 8), four
# from 64 px (64 -> 4), as the 64x64 conv encoders of disentanglement_lib (Locatello et al. 2019, appendix).
AUTO_CHANNELS = ((64, [32, 64, 128, 256]), (0, [32, 64]))


def conv_channels(cfg: ModelParams, height: int, width: int) -> list[int]:
    """The conv stack's channels per layer: cfg.channels as listed, or `auto` resolved for an H x W image."""
    if cfg.channels != "auto":
        return list(cfg.channels)
    return next(list(chans) for side, chans in AUTO_CHANNELS if min(height, width) >= side)


def feature_sizes(cfg: ModelParams, height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of the image and after each conv layer of the encoder: [(H, W), (H1, W1), ...].

    A stride-2 conv (kernel 3, padding 1) gives ceil(n / 2), a 2x max-pool floor(n / 2), so odd and
    non-square sizes are exact. Raises: UserError when a layer would shrink a side to 0 (an image too
    small for that many layers).
    """
    layers = conv_channels(cfg, height, width)
    sizes = [(height, width)]
    for _ in layers:
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2) if cfg.pooling else (-(-h // 2), -(-w // 2)))
        if min(sizes[-1]) < 1:
            raise UserError(
                f"a {height}x{width} image is too small for {len(layers)} conv layers of"
                f" {'max-pooling' if cfg.pooling else 'stride 2'}; list fewer model.channels or set a"
                " larger data.image_size"
            )
    return sizes


def _conv_encoder(cfg: ModelParams, out_dim: int, image_shape: tuple[int, int, int]) -> nn.Sequential:
    """Each layer halves the image: stride-2 conv, or conv + max-pool (the article's pooling)."""
    layers: list[nn.Module] = []
    in_ch = image_shape[0]
    for ch in conv_channels(cfg, *image_shape[1:]):
        if cfg.pooling:
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), _act(cfg.activation), nn.MaxPool2d(2)]
        else:
            layers += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1), _act(cfg.activation)]
        in_ch = ch
    h, w = feature_sizes(cfg, *image_shape[1:])[-1]
    layers += [nn.Flatten(), nn.Linear(in_ch * h * w, out_dim)]
    return nn.Sequential(*layers)


def _upsample(src: tuple[int, int], dst: tuple[int, int]) -> nn.Upsample:
    """Nearest upsampling from src to dst (H, W): by a factor 2 where that is exact, else to the size."""
    if dst == (2 * src[0], 2 * src[1]):
        return nn.Upsample(scale_factor=2)
    return nn.Upsample(size=dst)


def _conv_decoder(cfg: ModelParams, image_shape: tuple[int, int, int]) -> nn.Sequential:
    """Mirror of the encoder: transposed convs, or upsampling (unpooling) + conv, back to exactly (C, H, W)."""
    chans = list(reversed(conv_channels(cfg, *image_shape[1:])))
    sizes = list(reversed(feature_sizes(cfg, *image_shape[1:])))  # the smallest first, the image last
    h, w = sizes[0]
    layers: list[nn.Module] = [
        nn.Linear(cfg.latent_dim, chans[0] * h * w),
        _act(cfg.activation),
        nn.Unflatten(1, (chans[0], h, w)),
    ]
    for i, ch in enumerate(chans):
        out_ch = chans[i + 1] if i + 1 < len(chans) else image_shape[0]
        last = i + 1 == len(chans)
        src, dst = sizes[i], sizes[i + 1]
        if cfg.pooling:
            # MaxUnpool needs the encoder's indices, which prior samples do not have: upsample instead.
            layers += [_upsample(src, dst), nn.Conv2d(ch, out_ch, 3, padding=1)]
        else:
            # A transposed conv (kernel 3, stride 2, padding 1) gives 2n - 1 + output_padding: 1 for even sides.
            pad = (dst[0] - (2 * src[0] - 1), dst[1] - (2 * src[1] - 1))
            layers += [nn.ConvTranspose2d(ch, out_ch, 3, stride=2, padding=1, output_padding=pad)]
        if not last:
            layers.append(_act(cfg.activation))
    return nn.Sequential(*layers)


def build_encoder(cfg: ModelParams, out_dim: int, image_shape: tuple[int, int, int]) -> nn.Module:
    """(B, C, H, W) images -> (B, out_dim) features: mlp or conv as cfg.arch says.

    Raises: UserError for a conv stack too deep for the image (feature_sizes).
    """
    if cfg.arch == "conv":
        return _conv_encoder(cfg, out_dim, image_shape)
    return nn.Sequential(nn.Flatten(), _mlp([math.prod(image_shape), *cfg.hidden, out_dim], cfg.activation))


def build_decoder(cfg: ModelParams, image_shape: tuple[int, int, int]) -> nn.Module:
    """(B, cfg.latent_dim) codes -> (B, C, H, W) logits; its first layer is nn.Linear(latent_dim, ...).

    Raises: UserError for a conv stack too deep for the image (feature_sizes).
    """
    if cfg.arch == "conv":
        return _conv_decoder(cfg, image_shape)
    return nn.Sequential(
        _mlp([cfg.latent_dim, *reversed(cfg.hidden), math.prod(image_shape)], cfg.activation),
        nn.Unflatten(1, tuple(image_shape)),
    )


@dataclass
class Posterior:
    mu: torch.Tensor  # (B, latent): the code (AE) or the posterior mean (VAE)
    logvar: torch.Tensor | None  # (B, latent) for the VAE, None for the AE


class AutoEncoder(nn.Module):
    """Deterministic z = e(x); trained on reconstruction alone."""

    kind = "ae"

    def __init__(self, cfg: ModelParams, image_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(int(s) for s in image_shape)  # (C, H, W) of the images it encodes and decodes
        self.encoder = build_encoder(cfg, self._encoder_out(cfg), self.image_shape)
        self.decoder = build_decoder(cfg, self.image_shape)
        if cfg.recon == "gaussian":  # sigma-VAE: one learned log sigma for every pixel, starting at sigma = 1
            self.log_sigma = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _encoder_out(cfg: ModelParams) -> int:
        return cfg.latent_dim

    def encode(self, x: torch.Tensor) -> Posterior:
        """(B, C, H, W) images in [0, 1] -> the code mu (B, latent); logvar None."""
        return Posterior(self.encoder(x), None)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) codes -> (B, C, H, W) logits."""
        return self.decoder(z)

    def reparameterize(self, post: Posterior) -> torch.Tensor:
        """(B, latent) z to decode in training: the AE's code itself."""
        return post.mu

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Posterior]:
        """Reconstruction logits; a VAE samples z in training and uses the mean in eval."""
        post = self.encode(x)
        z = self.reparameterize(post) if self.training else post.mu
        return self.decode(z), post

    def loss(self, x: torch.Tensor, kl_weight: float | None = None) -> LossTerms:
        """Batch-mean per-image loss terms of x (B, C, H, W) in [0, 1]: scalars.

        recon is summed over pixels (nats for BCE and the Gaussian, squared error for MSE), KL in nats per image.
        kl_weight multiplies the KL term (the VAE's; an AE has none): the training loop passes its
        warm-up schedule's value (training.kl_weight); None means the full weight cfg.beta.
        z is sampled in eval too, so validation reports the same ELBO terms.
        """
        post = self.encode(x)
        recon = recon_per_image(
            self.decode(self.reparameterize(post)), x, self.cfg.recon, getattr(self, "log_sigma", None)
        ).mean()
        return self._total(recon, post, self.cfg.beta if kl_weight is None else kl_weight)

    def _total(self, recon: torch.Tensor, post: Posterior, kl_weight: float) -> LossTerms:
        zero = recon.new_zeros(())
        return LossTerms(total=recon, recon=recon, kl=zero)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I): garbage for an AE, digits for a VAE (the article's claim)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z))


class VAE(AutoEncoder):
    """The encoder outputs mean and log-variance; z = mu + sigma * eps (reparameterization)."""

    kind = "vae"

    @staticmethod
    def _encoder_out(cfg: ModelParams) -> int:
        return 2 * cfg.latent_dim

    def encode(self, x: torch.Tensor) -> Posterior:
        """(B, C, H, W) images in [0, 1] -> q(z|x): mu and logvar, (B, latent) each."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # (B, latent) each
        return Posterior(mu, logvar.clamp(-30.0, 20.0))  # keeps exp() finite early in training

    def reparameterize(self, post: Posterior) -> torch.Tensor:
        """(B, latent) z ~ q(z|x), differentiable in mu and logvar."""
        return reparameterize(post.mu, post.logvar, torch.randn_like(post.mu))

    def _total(self, recon: torch.Tensor, post: Posterior, kl_weight: float) -> LossTerms:
        kl_dims = kl_per_dim(post.mu, post.logvar).mean(0)  # (latent,) nats, batch mean
        kl = kl_dims.sum()
        # Free bits (Kingma et al. 2016, IAF): a dimension below the floor costs the floor, no gradient.
        penalised = kl_dims.clamp(min=self.cfg.free_bits).sum() if self.cfg.free_bits > 0 else kl
        return LossTerms(total=recon + kl_weight * penalised, recon=recon, kl=kl)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, sigma = exp(logvar / 2): a sample of N(mu, sigma^2) differentiable in mu and logvar.

    mu, logvar (..., latent); eps standard normal noise of the same or a broadcastable shape, e.g.
    (k, B, latent) for k samples per image (the noise carries no gradient). Returns eps's
    broadcast shape. Source: Kingma & Welling 2014, Auto-Encoding Variational Bayes, section 2.4.
    """
    return mu + torch.exp(0.5 * logvar) * eps


# The registry of model kinds (as timm's model list): build_model and the tests read it.
MODEL_KINDS: dict[str, type[AutoEncoder]] = {"ae": AutoEncoder, "vae": VAE}


def build_model(cfg: ModelParams, image_shape: tuple[int, int, int]) -> AutoEncoder:
    """The untrained model of kind cfg.kind (a key of MODEL_KINDS) for (C, H, W) images, in training mode.

    Raises: UserError for a conv stack too deep for the image (feature_sizes).
    """
    return MODEL_KINDS[cfg.kind](cfg, image_shape)

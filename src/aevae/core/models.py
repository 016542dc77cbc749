"""AutoEncoder and Variational AutoEncoder, built from shared encoder/decoder parts.

Images are (B, *IMAGE_SHAPE) = (B, 1, 28, 28) floats in [0, 1]. Decoders return
logits; the image is sigmoid(logits), which keeps BCE numerically stable.
MODEL_KINDS is the registry of model kinds: build_model and the tests read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aevae.config import ModelParams
from aevae.core.losses import LossTerms, kl_per_dim, recon_per_image
from aevae.data import IMAGE_SHAPE, PIXELS

EVAL_BATCH = 1024  # images per forward pass outside training (evaluation, scoring): bounds memory

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "linear": nn.Identity,  # makes the linear AE the article compares with PCA
}


def as_images(images, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W) pixels or float images in [0, 1] -> float (N, 1, H, W) in [0, 1] on `device`.

    Also takes flat (N, PIXELS) rows and (N, 1, H, W) tensors. Never raises for these shapes.
    """
    x = torch.as_tensor(images).to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 2:  # flat (N, PIXELS)
        return x.reshape(-1, *IMAGE_SHAPE)
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


def _conv_encoder(cfg: ModelParams, out_dim: int) -> nn.Sequential:
    """Each layer halves the image: stride-2 conv, or conv + max-pool (the article's pooling)."""
    layers: list[nn.Module] = []
    in_ch, side = IMAGE_SHAPE[0], IMAGE_SHAPE[-1]
    for ch in cfg.channels:
        if cfg.pooling:
            layers += [nn.Conv2d(in_ch, ch, 3, padding=1), _act(cfg.activation), nn.MaxPool2d(2)]
        else:
            layers += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1), _act(cfg.activation)]
        in_ch, side = ch, side // 2
    layers += [nn.Flatten(), nn.Linear(in_ch * side * side, out_dim)]
    return nn.Sequential(*layers)


def _conv_decoder(cfg: ModelParams) -> nn.Sequential:
    """Mirror of the encoder: transposed convs, or upsampling (unpooling) + conv."""
    chans = list(reversed(cfg.channels))
    side = IMAGE_SHAPE[-1] // 2 ** len(chans)
    layers: list[nn.Module] = [nn.Linear(cfg.latent_dim, chans[0] * side * side), _act(cfg.activation),
                               nn.Unflatten(1, (chans[0], side, side))]
    for i, ch in enumerate(chans):
        out_ch = chans[i + 1] if i + 1 < len(chans) else IMAGE_SHAPE[0]
        last = i + 1 == len(chans)
        if cfg.pooling:
            # MaxUnpool needs the encoder's indices, which prior samples do not have: upsample instead.
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(ch, out_ch, 3, padding=1)]
        else:
            layers += [nn.ConvTranspose2d(ch, out_ch, 3, stride=2, padding=1, output_padding=1)]
        if not last:
            layers.append(_act(cfg.activation))
    return nn.Sequential(*layers)


def build_encoder(cfg: ModelParams, out_dim: int) -> nn.Module:
    """(B, 1, 28, 28) images -> (B, out_dim) features: mlp or conv as cfg.arch says. Never raises."""
    if cfg.arch == "conv":
        return _conv_encoder(cfg, out_dim)
    return nn.Sequential(nn.Flatten(), _mlp([PIXELS, *cfg.hidden, out_dim], cfg.activation))


def build_decoder(cfg: ModelParams) -> nn.Module:
    """(B, cfg.latent_dim) codes -> (B, 1, 28, 28) logits; its first layer is nn.Linear(latent_dim, ...)."""
    if cfg.arch == "conv":
        return _conv_decoder(cfg)
    return nn.Sequential(_mlp([cfg.latent_dim, *reversed(cfg.hidden), PIXELS], cfg.activation),
                         nn.Unflatten(1, IMAGE_SHAPE))


@dataclass
class Posterior:
    mu: torch.Tensor  # (B, latent): the code (AE) or the posterior mean (VAE)
    logvar: torch.Tensor | None  # (B, latent) for the VAE, None for the AE


class AutoEncoder(nn.Module):
    """Deterministic z = e(x); trained on reconstruction alone."""

    kind = "ae"

    def __init__(self, cfg: ModelParams):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg, self._encoder_out(cfg))
        self.decoder = build_decoder(cfg)

    @staticmethod
    def _encoder_out(cfg: ModelParams) -> int:
        return cfg.latent_dim

    def encode(self, x: torch.Tensor) -> Posterior:
        """(B, 1, 28, 28) images in [0, 1] -> the code mu (B, latent); logvar None."""
        return Posterior(self.encoder(x), None)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent) codes -> (B, 1, 28, 28) logits."""
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
        """Batch-mean per-image loss terms of x (B, 1, 28, 28) in [0, 1]: scalars.

        recon is summed over pixels (nats for BCE, squared error for MSE), KL in nats per image.
        kl_weight multiplies the KL term (the VAE's; an AE has none): the training loop passes its
        warm-up schedule's value (training.kl_weight); None means the full weight cfg.beta.
        z is sampled in eval too, so validation reports the same ELBO terms.
        """
        post = self.encode(x)
        recon = recon_per_image(self.decode(self.reparameterize(post)), x, self.cfg.recon).mean()
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
        """(B, 1, 28, 28) images in [0, 1] -> q(z|x): mu and logvar, (B, latent) each."""
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


def build_model(cfg: ModelParams) -> AutoEncoder:
    """The untrained model of kind cfg.kind (a key of MODEL_KINDS), in training mode. Never raises for a
    validated ModelParams."""
    return MODEL_KINDS[cfg.kind](cfg)

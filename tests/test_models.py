"""Models and losses: shapes, no NaNs and real behaviour for every model kind and arch.

Plain PyTorch, in-process, small sizes: the whole file runs in a few seconds on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aevae.config import ModelParams
from aevae.core.losses import kl_per_dim, recon_per_image
from aevae.core.models import MODEL_KINDS, AutoEncoder, Posterior, build_model
from aevae.core.training import kl_weight

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_SHAPE = (1, 28, 28)  # MNIST's (C, H, W): the shape most tests build for
PIXELS = 784


LATENT = 3
BATCH = 5

# Every architecture the config allows: MLP, conv with stride-2 or pooling, one or two channel layers.
ARCHS = {
    "mlp": dict(arch="mlp", hidden=[32, 16]),
    "conv1-stride": dict(arch="conv", channels=[4], pooling=False),
    "conv1-pool": dict(arch="conv", channels=[4], pooling=True),
    "conv2-stride": dict(arch="conv", channels=[4, 8], pooling=False),
    "conv2-pool": dict(arch="conv", channels=[4, 8], pooling=True),
}
KINDS = tuple(MODEL_KINDS)  # every registered model kind, as timm's tests run over its model list


def make(kind: str, arch: str, seed: int = 0, **overrides) -> AutoEncoder:
    torch.manual_seed(seed)
    cfg = ModelParams(kind=kind, latent_dim=LATENT, **{**ARCHS[arch], **overrides})
    return build_model(cfg, IMAGE_SHAPE)


def images(n: int = BATCH, seed: int = 0) -> torch.Tensor:
    """(n, 1, 28, 28) floats in [0, 1], some pixels exactly 0 or 1 like real digits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *IMAGE_SHAPE, generator=g)
    x[x < 0.3] = 0.0
    x[x > 0.9] = 1.0
    return x


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def first_weighted(module: nn.Module) -> nn.Module:
    return next(m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


every_model = pytest.mark.parametrize(
    "kind, arch", [(k, a) for k in KINDS for a in ARCHS], ids=[f"{k}-{a}" for k in KINDS for a in ARCHS]
)


# --------------------------------------------------------------------- shapes


@every_model
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_shapes_and_finite(kind, arch, mode):
    model = make(kind, arch)
    model.train(mode == "train")
    x = images()
    logits, post = model(x)
    assert isinstance(post, Posterior)
    assert logits.shape == (BATCH, *IMAGE_SHAPE)
    assert post.mu.shape == (BATCH, LATENT)
    assert torch.isfinite(logits).all() and torch.isfinite(post.mu).all()
    if kind == "vae":
        assert post.logvar is not None and post.logvar.shape == (BATCH, LATENT)
        assert torch.isfinite(post.logvar).all()
    else:
        assert post.logvar is None


@every_model
def test_encode_decode_shapes(kind, arch):
    model = make(kind, arch).eval()
    post = model.encode(images())
    assert post.mu.shape == (BATCH, LATENT)
    assert model.decode(post.mu).shape == (BATCH, *IMAGE_SHAPE)


@every_model
def test_sample_shape_and_range(kind, arch):
    model = make(kind, arch).eval()
    out = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert out.shape == (7, *IMAGE_SHAPE)
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    again = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "sample() with the same generator must be reproducible"


@every_model
@pytest.mark.parametrize("recon", ["bce", "mse"])
def test_loss_terms(kind, arch, recon):
    model = make(kind, arch, recon=recon)
    terms = model.loss(images())
    for t in (terms.total, terms.recon, terms.kl):
        assert t.shape == () and torch.isfinite(t)
    assert terms.recon > 0
    if kind == "ae":
        assert terms.kl.item() == 0.0
        assert torch.equal(terms.total, terms.recon)
    else:
        assert terms.kl.item() >= 0.0
        # beta 1, no warm-up, no free bits: the ELBO
        torch.testing.assert_close(terms.total, terms.recon + terms.kl)
    terms.total.backward()  # differentiable end to end
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_vae_eval_forward_uses_the_mean(arch):
    """forward() samples z in training mode and uses mu in eval mode."""
    model = make("vae", arch)
    x = images()
    model.eval()
    a, post = model(x)
    b, _ = model(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, model.decode(post.mu))
    model.train()
    c, _ = model(x)
    assert not torch.equal(a, c), "a training-mode forward should sample z"


# ---------------------------------------------------------- reparameterization


@pytest.mark.parametrize("arch", list(ARCHS))
def test_vae_gradients_flow_through_sampling(arch):
    """With beta = 0 only the recon term is left; its gradient must reach the encoder
    through z = mu + sigma * eps, including the log-variance head (only reachable via sigma)."""
    model = make("vae", arch, beta=0.0)
    model.train()
    terms = model.loss(images())
    assert torch.equal(terms.total, terms.recon)
    terms.recon.backward()

    first = first_weighted(model.encoder)
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0

    head = linears(model.encoder)[-1]  # out_features = 2 * latent: [mu | logvar]
    assert head.out_features == 2 * LATENT
    mu_grad, logvar_grad = head.weight.grad[:LATENT], head.weight.grad[LATENT:]
    assert mu_grad.abs().sum() > 0
    assert logvar_grad.abs().sum() > 0, "no gradient reached logvar: sampling step is not reparameterized"


def test_reparameterize_moments_and_gradients():
    """The reparameterized z is differentiable in mu and logvar, with unit-normal noise."""
    model = make("vae", "mlp")
    mu = torch.zeros(20_000, LATENT, requires_grad=True)
    logvar = torch.full((20_000, LATENT), math.log(4.0), requires_grad=True)
    z = model.reparameterize(Posterior(mu, logvar))
    assert z.shape == mu.shape
    torch.testing.assert_close(z.mean().item(), 0.0, atol=0.05, rtol=0)
    torch.testing.assert_close(z.std().item(), 2.0, atol=0.05, rtol=0)
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones_like(mu))
    assert logvar.grad.abs().sum() > 0


# ------------------------------------------------------------- linear activation


@pytest.mark.parametrize("arch", ["mlp", "conv1-stride", "conv2-stride"])
def test_linear_autoencoder_is_affine(arch):
    """activation 'linear' (the AE the article compares with PCA) makes the encoder affine."""
    model = make("ae", arch, activation="linear").double().eval()
    x1, x2 = images(seed=1).double(), images(seed=2).double()
    for a in (0.0, 0.3, 1.7, -0.5):
        mixed = model.encode(a * x1 + (1 - a) * x2).mu
        expected = a * model.encode(x1).mu + (1 - a) * model.encode(x2).mu
        torch.testing.assert_close(mixed, expected, atol=1e-10, rtol=1e-10)
        # and the decoder: an affine map of z
        z1, z2 = model.encode(x1).mu, model.encode(x2).mu
        torch.testing.assert_close(
            model.decode(a * z1 + (1 - a) * z2),
            a * model.decode(z1) + (1 - a) * model.decode(z2),
            atol=1e-10,
            rtol=1e-10,
        )


def test_relu_autoencoder_is_not_affine():
    """The control for the test above: with a non-linearity the identity fails."""
    model = make("ae", "mlp", activation="relu").double().eval()
    x1, x2 = images(seed=1).double(), images(seed=2).double()
    a = 1.7
    mixed = model.encode(a * x1 + (1 - a) * x2).mu
    expected = a * model.encode(x1).mu + (1 - a) * model.encode(x2).mu
    assert (mixed - expected).abs().max() > 1e-4


# ------------------------------------------------------------------ KL


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    mu = torch.zeros(4, LATENT)
    logvar = torch.zeros(4, LATENT)
    kl = kl_per_dim(mu, logvar)
    assert kl.shape == (4, LATENT)
    assert torch.equal(kl, torch.zeros_like(kl))
    g = torch.Generator().manual_seed(0)
    kl = kl_per_dim(torch.randn(100, LATENT, generator=g), torch.randn(100, LATENT, generator=g))
    assert (kl >= 0).all() and (kl.sum(1) > 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_analytic_kl_matches_monte_carlo(seed):
    """sum_d kl_per_dim == E_{z~q}[log q(z) - log p(z)], q = N(mu, sigma^2), p = N(0, I)."""
    g = torch.Generator().manual_seed(seed)
    dims = 4
    mu = torch.randn(dims, generator=g, dtype=torch.float64) * 1.5
    logvar = torch.randn(dims, generator=g, dtype=torch.float64)  # sigma from ~0.37 to ~2.7
    analytic = kl_per_dim(mu[None], logvar[None]).sum().item()

    n = 200_000
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(n, dims, generator=g, dtype=torch.float64)
    z = mu + std * eps
    log_q = (-0.5 * eps**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(1)
    samples = log_q - log_p
    estimate = samples.mean().item()
    stderr = samples.std().item() / math.sqrt(n)
    assert abs(estimate - analytic) < 5 * stderr + 1e-3, (estimate, analytic, stderr)


# ------------------------------------------------------------ reconstruction


def test_recon_bce_matches_torch_per_image():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 28, 28, generator=g) * 3
    x = images(6)
    got = recon_per_image(logits, x, "bce")
    assert got.shape == (6,)
    expected = torch.stack(
        [F.binary_cross_entropy(torch.sigmoid(lg), xi, reduction="sum") for lg, xi in zip(logits, x)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_recon_mse_is_sum_of_squared_error_per_image():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 28, 28, generator=g) * 3
    x = images(6)
    got = recon_per_image(logits, x, "mse")
    assert got.shape == (6,)
    expected = torch.stack([((torch.sigmoid(lg) - xi) ** 2).sum() for lg, xi in zip(logits, x)])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, F.mse_loss(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1))


def test_recon_units_are_summed_over_784_pixels():
    logits = torch.zeros(2, 1, 28, 28)  # sigmoid = 0.5 everywhere
    half = torch.full((2, 1, 28, 28), 0.5)
    torch.testing.assert_close(recon_per_image(logits, half, "bce"), torch.full((2,), PIXELS * math.log(2.0)))
    torch.testing.assert_close(recon_per_image(logits, torch.zeros_like(half), "mse"), torch.full((2,), PIXELS * 0.25))
    # a perfect, confident reconstruction costs (almost) nothing
    x = (images(2) > 0.5).float()
    assert recon_per_image((x * 2 - 1) * 30, x, "bce").max() < 1e-6
    assert recon_per_image((x * 2 - 1) * 30, x, "mse").max() < 1e-6


def test_recon_bf16_logits_are_summed_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 28, 28, generator=g)
    x = images(3)
    got = recon_per_image(logits.bfloat16(), x, "bce")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, recon_per_image(logits.bfloat16().float(), x, "bce"))


# ------------------------------------------------------------ KL weight


@pytest.mark.parametrize(
    "beta, epoch, warmup, expected",
    [
        (1.0, 0, 4, 0.0),
        (1.0, 1, 4, 0.25),
        (2.0, 2, 4, 1.0),
        (2.0, 3, 4, 1.5),
        (2.0, 4, 4, 2.0),
        (2.0, 9, 4, 2.0),
        (0.5, 0, 0, 0.5),
        (0.5, 7, 0, 0.5),
        (0.0, 0, 0, 0.0),
        (0.0, 5, 3, 0.0),
    ],
)
def test_kl_weight_warmup(beta, epoch, warmup, expected):
    assert kl_weight(beta, epoch, warmup) == pytest.approx(expected)


def test_vae_loss_applies_the_warmup_weight():
    model = make("vae", "mlp", beta=2.0, kl_warmup_epochs=4)
    x = images()
    for epoch, weight in [(0, 0.0), (2, 1.0), (4, 2.0), (10, 2.0)]:
        terms = model.loss(x, kl_weight(2.0, epoch, 4))
        torch.testing.assert_close(terms.total, terms.recon + weight * terms.kl)


def test_beta_zero_vae_total_is_recon():
    model = make("vae", "mlp", beta=0.0)
    terms = model.loss(images())
    assert torch.equal(terms.total, terms.recon)
    assert terms.kl > 0, "the true KL is still reported with beta = 0"


# ------------------------------------------------------------- free bits


def true_kl(model: AutoEncoder, x: torch.Tensor) -> torch.Tensor:
    post = model.encode(x)  # deterministic: the sampling noise does not enter the KL
    return kl_per_dim(post.mu, post.logvar).mean(0)  # (latent,)


@pytest.mark.parametrize("arch", ["mlp", "conv2-pool"])
def test_free_bits_floor_each_dimension(arch):
    lam, beta = 50.0, 0.5
    model = make("vae", arch, beta=beta, free_bits=lam)
    x = images()
    dims = true_kl(model, x)
    assert (dims < lam).all(), "test premise: every KL dimension below the floor"
    terms = model.loss(x)
    torch.testing.assert_close(terms.total, terms.recon + beta * LATENT * lam)
    torch.testing.assert_close(terms.kl, dims.sum(), msg="reported kl must stay the true KL")
    # below the floor the KL term is a constant: the gradient is the recon gradient alone
    torch.manual_seed(123)
    model.loss(x).total.backward()
    with_floor = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(123)  # the same sampling noise
    model.loss(x).recon.backward()
    for a, b in zip(with_floor, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)


def test_free_bits_inactive_when_every_dimension_is_above_the_floor():
    beta = 0.5
    model = make("vae", "mlp", beta=beta, free_bits=1e-6)
    x = images()
    assert (true_kl(model, x) > 1e-6).all()
    terms = model.loss(x)
    torch.testing.assert_close(terms.total, terms.recon + beta * terms.kl)


def test_free_bits_partial_floor():
    """Dimensions below the floor count as the floor, those above as themselves."""
    model = make("vae", "mlp", beta=1.0)
    x = images()
    dims = true_kl(model, x)
    lam = float(dims.detach().sort().values[1])  # between the smallest and the largest dimension
    model.cfg = model.cfg.model_copy(update={"free_bits": lam})
    terms = model.loss(x)
    torch.testing.assert_close(terms.total - terms.recon, dims.clamp(min=lam).sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.kl, dims.sum())


# ------------------------------------------------------------------ registry


def test_the_registry_holds_every_kind_the_config_allows():
    from typing import get_args

    assert set(MODEL_KINDS) == set(get_args(ModelParams.model_fields["kind"].annotation))
    assert all(build_model(ModelParams(kind=k), IMAGE_SHAPE).kind == k for k in MODEL_KINDS)


@every_model
def test_the_decoder_first_layer_takes_the_latent_size(kind, arch):
    """latent_dim reaches the decoder's first layer (the walk from params.yaml ends here)."""
    model = make(kind, arch)
    assert linears(model.decoder)[0].in_features == LATENT


def test_one_reparameterization_serves_the_model_and_the_metrics():
    """VAE.reparameterize is models.reparameterize with fresh N(0, I) noise."""
    from aevae.core.models import reparameterize

    model = make("vae", "mlp")
    post = model.encode(images())
    torch.manual_seed(7)
    z = model.reparameterize(post)
    torch.manual_seed(7)
    torch.testing.assert_close(z, reparameterize(post.mu, post.logvar, torch.randn_like(post.mu)), rtol=0, atol=0)


# ------------------------------------------------------------ any image shape

# (C, H, W): grey and colour at 8, 28, 32 and 64 px, and odd, non-square sizes.
SHAPES = [
    (1, 8, 8),
    (3, 8, 8),
    (1, 28, 28),
    (3, 28, 28),
    (1, 32, 32),
    (3, 32, 32),
    (1, 64, 64),
    (3, 64, 64),
    (1, 20, 12),
    (3, 15, 9),
    (3, 9, 31),
]


@every_model
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_round_trip_any_shape(kind, arch, shape):
    torch.manual_seed(0)
    model = build_model(ModelParams(kind=kind, latent_dim=LATENT, **ARCHS[arch]), shape)
    x = torch.rand(BATCH, *shape)
    logits, post = model(x)
    assert logits.shape == (BATCH, *shape) and post.mu.shape == (BATCH, LATENT)
    assert model.sample(2).shape == (2, *shape)
    assert torch.isfinite(model.loss(x).total)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("shape", "layers", "code_side"),
    [((1, 28, 28), 2, (7, 7)), ((3, 32, 32), 2, (8, 8)), ((3, 64, 64), 4, (4, 4)), ((3, 96, 64), 4, (6, 4))],
)
def test_auto_channels_go_deeper_from_64_px(kind, shape, layers, code_side):
    from aevae.core.models import conv_channels, feature_sizes

    cfg = ModelParams(kind=kind, arch="conv", latent_dim=LATENT)  # channels: auto, the default
    assert cfg.channels == "auto" and len(conv_channels(cfg, *shape[1:])) == layers
    assert feature_sizes(cfg, *shape[1:])[-1] == code_side
    model = build_model(cfg, shape)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == conv_channels(cfg, *shape[1:])
    x = torch.rand(2, *shape)
    assert model(x)[0].shape == (2, *shape)
    # A listed stack is taken as it is, whatever the size.
    listed = ModelParams(kind=kind, arch="conv", channels=[4, 8, 16], latent_dim=LATENT)
    assert conv_channels(listed, *shape[1:]) == [4, 8, 16]


def test_conv_stack_too_deep_for_the_image_is_a_user_error():
    from aevae.errors import UserError

    cfg = ModelParams(arch="conv", channels=[4, 8], pooling=True, latent_dim=2)
    with pytest.raises(UserError, match="too small .*model.channels"):
        build_model(cfg, (1, 3, 3))


def test_gaussian_recon_is_the_normal_nll_with_a_learned_shared_sigma():
    from aevae.core.losses import gaussian_nll

    x, mean = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    log_sigma = torch.tensor(-1.2)
    expected = -torch.distributions.Normal(mean, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(mean, x, log_sigma), expected)
    torch.testing.assert_close(
        recon_per_image(torch.logit(mean), x, "gaussian", log_sigma), expected, rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("kind", KINDS)
def test_gaussian_models_learn_their_sigma(kind):
    torch.manual_seed(0)
    model = build_model(ModelParams(kind=kind, latent_dim=2, hidden=[16], recon="gaussian"), (3, 8, 8))
    assert float(model.log_sigma.detach()) == 0.0 and "log_sigma" in model.state_dict()
    model.loss(torch.rand(6, 3, 8, 8)).total.backward()
    assert model.log_sigma.grad is not None and float(model.log_sigma.grad) != 0.0
    assert not hasattr(build_model(ModelParams(kind=kind, hidden=[16]), (3, 8, 8)), "log_sigma")  # bce: none


def test_vae_terms_of_a_gaussian_vae_use_its_likelihood():
    from aevae.evaluation import metrics

    torch.manual_seed(0)
    model = build_model(ModelParams(kind="vae", latent_dim=2, hidden=[16], recon="gaussian"), (3, 8, 8)).eval()
    x = torch.rand(5, 3, 8, 8)
    one = metrics.vae_terms(model, x, k=1, seed=0)
    with torch.no_grad():
        model.log_sigma.fill_(-1.0)  # a sharper likelihood changes -log p(x|z), not the KL
    sharper = metrics.vae_terms(model, x, k=1, seed=0)
    assert all(math.isfinite(v) for v in one.values())
    assert one["kl_nats_per_image"] == sharper["kl_nats_per_image"]
    assert one["neg_elbo_nats_per_image"] != sharper["neg_elbo_nats_per_image"]

"""losses.py against closed forms and Monte-Carlo estimates: the VAE maths, the contrastive loss, and
(at the end) the adversarial losses, R1 and the gradient penalty against ``torch.autograd.grad``."""

import math

import pytest
import torch

from mmgen_lightning.losses import (continuous_log_likelihood, gaussian_log_density, kl_standard_normal, kl_weight,
                                    log_mean_exp, mixture_log_density, product_of_experts, reparameterize)
from mmgen_lightning.losses import (ADVERSARIAL_LOSSES, discriminator_loss, generator_loss, gradient_penalty,
                                    input_gradient_norms, r1_penalty)


def test_gaussian_log_density_matches_torch_distributions():
    mu, logvar, z = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)


def test_kl_matches_closed_form_and_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, -0.7]])
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(-1))
    z = reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2))
    monte_carlo = (gaussian_log_density(z, mu, logvar) - gaussian_log_density(z, 0 * z, 0 * z)).mean()
    assert abs(monte_carlo.item() - kl_standard_normal(mu, logvar).item()) < 0.02


def test_product_of_experts_is_precision_weighted_and_matches_numeric_product():
    mus = torch.tensor([[[1.0]], [[-2.0]]])
    logvars = torch.log(torch.tensor([[[0.5]], [[2.0]]]))
    mu, logvar = product_of_experts(mus, logvars)
    precision = 1.0 + 1 / 0.5 + 1 / 2.0  # prior expert N(0, 1) included
    assert math.isclose(torch.exp(-logvar).item(), precision, rel_tol=1e-6)
    assert math.isclose(mu.item(), (1.0 / 0.5 - 2.0 / 2.0) / precision, rel_tol=1e-6)
    # numeric product of the three densities on a grid, normalised, has the same mean and variance
    grid = torch.linspace(-10, 10, 200_001).unsqueeze(-1)
    log_product = sum(gaussian_log_density(grid, m.expand_as(grid), lv.expand_as(grid))
                      for m, lv in [(mus[0, 0], logvars[0, 0]), (mus[1, 0], logvars[1, 0]),
                                    (torch.zeros(1), torch.zeros(1))])
    weights = torch.softmax(log_product, 0)
    numeric_mean = (weights * grid[:, 0]).sum()
    numeric_var = (weights * (grid[:, 0] - numeric_mean) ** 2).sum()
    assert abs(numeric_mean.item() - mu.item()) < 1e-4
    assert abs(numeric_var.item() - torch.exp(logvar).item()) < 1e-4


def test_product_of_experts_mask_drops_missing_experts():
    mus, logvars = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    masked = product_of_experts(mus, logvars, mask=torch.tensor([[1.0] * 4, [0.0] * 4]))
    alone = product_of_experts(mus[:1], logvars[:1])
    torch.testing.assert_close(masked[0], alone[0])
    torch.testing.assert_close(masked[1], alone[1])


def test_mixture_log_density_of_identical_components_equals_component():
    mu, logvar, z = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    mixture = mixture_log_density(z, torch.stack([mu, mu, mu]), torch.stack([logvar, logvar, logvar]))
    torch.testing.assert_close(mixture, gaussian_log_density(z, mu, logvar))


def test_likelihoods_match_torch_distributions():
    x, mean, log_scale = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.tensor(-0.3)
    laplace = torch.distributions.Laplace(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1)
    normal = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(continuous_log_likelihood(x, mean, log_scale, "laplace"), laplace)
    torch.testing.assert_close(continuous_log_likelihood(x, mean, log_scale, "gaussian"), normal)


def test_kl_warmup_is_linear_then_flat():
    assert kl_weight(0, 2.0, 100) == 0.0
    assert kl_weight(50, 2.0, 100) == 1.0
    assert kl_weight(500, 2.0, 100) == 2.0
    assert kl_weight(3, 0.5, 0) == 0.5


def test_symmetric_info_nce_matches_the_closed_form_and_gathered_candidates():
    import torch.nn.functional as F

    from mmgen_lightning.losses import symmetric_info_nce

    # two pairs on the unit circle: a = (e1, e2), b = (e1, (e1 + e2)/sqrt 2); s = 2
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [2 ** -0.5, 2 ** -0.5]])
    s, c = 2.0, 2 ** -0.5
    # a->b rows: a1.b = (1, c), a2.b = (0, c); b->a rows: b1.a = (1, 0), b2.a = (c, c)
    expected = 0.5 * 0.5 * (-math.log(math.exp(s) / (math.exp(s) + math.exp(s * c)))
                            - math.log(math.exp(s * c) / (1 + math.exp(s * c)))
                            - math.log(math.exp(s) / (math.exp(s) + 1))
                            - math.log(0.5))
    assert abs(symmetric_info_nce(a, b, s).item() - expected) < 1e-6
    # perfectly separated pairs at a large scale: loss -> 0; swapped pairs: loss grows with the scale
    assert symmetric_info_nce(a, a, 50.0).item() < 1e-6
    assert symmetric_info_nce(a, a.flip(0), 50.0).item() > 49
    # queries of one "process" against the gathered global batch: the two halves average to the whole
    torch.manual_seed(0)
    x, y = F.normalize(torch.randn(6, 4), dim=1), F.normalize(torch.randn(6, 4), dim=1)
    halves = [symmetric_info_nce(x[i:i + 3], y[i:i + 3], 3.0, x, y, offset=i) for i in (0, 3)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, symmetric_info_nce(x, y, 3.0))


def test_log_mean_exp_is_the_log_of_the_mean_and_bounds_the_mean_of_logs():
    log_p = torch.tensor([[-1000.0, -3.0], [-1001.0, 0.0], [-999.5, -1.0]])  # K=3, B=2: far below exp's range
    expected = torch.tensor([-1000.0 + math.log((1 + math.exp(-1.0) + math.exp(0.5)) / 3),
                             math.log((math.exp(-3.0) + 1 + math.exp(-1.0)) / 3)])
    torch.testing.assert_close(log_mean_exp(log_p, 0), expected)
    assert (log_mean_exp(log_p, 0) >= log_p.mean(0)).all()
    torch.testing.assert_close(log_mean_exp(log_p[:1], 0), log_p[0])  # K = 1: the sample itself


# --- adversarial losses (was tests/test_losses_gan.py) ----------------------------------------------
REAL = torch.tensor([2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
FAKE = torch.tensor([-1.0, 0.3, -2.5, 0.8], dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def closed_form(kind: str) -> tuple[float, float]:
    """(discriminator loss, generator loss) written out element by element."""
    real, fake = REAL.tolist(), FAKE.tolist()
    if kind == "non_saturating":
        return (mean(-math.log(sigmoid(r)) for r in real) + mean(-math.log(1 - sigmoid(f)) for f in fake),
                mean(-math.log(sigmoid(f)) for f in fake))
    if kind == "hinge":
        return mean(max(0.0, 1 - r) for r in real) + mean(max(0.0, 1 + f) for f in fake), -mean(fake)
    if kind == "wgan_gp":
        return mean(fake) - mean(real), -mean(fake)
    return (mean(0.5 * (r - 1) ** 2 for r in real) + mean(0.5 * f**2 for f in fake),
            mean(0.5 * (f - 1) ** 2 for f in fake))


@pytest.mark.parametrize("kind", ADVERSARIAL_LOSSES)
def test_losses_match_closed_forms(kind):
    d_expected, g_expected = closed_form(kind)
    assert discriminator_loss(REAL, FAKE, kind).item() == pytest.approx(d_expected, rel=1e-6)
    assert generator_loss(FAKE, kind).item() == pytest.approx(g_expected, rel=1e-6)


def test_non_saturating_loss_is_exact_where_a_sigmoid_would_saturate():
    # log(sigmoid(-100)) is -inf in float32 when computed in two steps; the logits form gives 100
    logits = torch.tensor([-100.0])
    assert discriminator_loss(logits, -logits, "non_saturating").item() == pytest.approx(200.0)
    assert generator_loss(logits, "non_saturating").item() == pytest.approx(100.0)
    # non-saturating: a confident discriminator still gives the generator a gradient of about -1
    logits.requires_grad_(True)
    generator_loss(logits, "non_saturating").backward()
    assert logits.grad.item() == pytest.approx(-1.0)


def test_hinge_is_zero_beyond_the_margin():
    assert discriminator_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -4.0]), "hinge").item() == 0.0


def test_unknown_loss_names_the_allowed_ones():
    with pytest.raises(ValueError, match="hinge"):
        discriminator_loss(REAL, FAKE, "vanilla")
    with pytest.raises(ValueError, match="least_squares"):
        generator_loss(FAKE, "bce")


def quadratic_critic(a: torch.Tensor):
    """``D(x) = sum(a * x^2)`` per sample, so ``grad_x D = 2 a x``."""
    return lambda x: (a * x.pow(2)).flatten(1).sum(1)


def test_r1_matches_autograd_and_the_closed_form():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = quadratic_critic(a)(x)
    penalty = r1_penalty(logits, x)
    (gradient,) = torch.autograd.grad(logits.sum(), x, retain_graph=True)
    assert penalty.item() == pytest.approx(gradient.flatten(1).pow(2).sum(1).mean().item(), rel=1e-12)
    assert penalty.item() == pytest.approx((2 * a * x).flatten(1).pow(2).sum(1).mean().item(), rel=1e-12)
    # the penalty keeps its graph: it trains the discriminator, d/da mean sum(4 a^2 x^2) = 8 a mean(x^2)
    penalty.backward()
    torch.testing.assert_close(a.grad, 8 * a.detach() * x.detach().pow(2).mean(0))


def test_gradient_norms_are_per_sample():
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    norms = input_gradient_norms(0.5 * x.pow(2).sum(1), x)  # grad = x
    torch.testing.assert_close(norms, torch.tensor([5.0, 1.0]))


def test_gradient_penalty_of_a_linear_critic_is_the_slope_minus_one_squared():
    torch.manual_seed(0)
    w = torch.tensor([[0.6, -1.2], [2.0, 0.4]], requires_grad=True)  # ||w|| = sqrt(5.96)
    critic = lambda x: (w * x).flatten(1).sum(1)  # noqa: E731 - grad_x = w everywhere
    real, fake = torch.randn(16, 2, 2), torch.randn(16, 2, 2)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx((math.sqrt(5.96) - 1) ** 2, rel=1e-6)
    penalty.backward()  # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(w.grad, 2 * (math.sqrt(5.96) - 1) * w.detach() / math.sqrt(5.96))


def test_gradient_penalty_matches_autograd_on_the_interpolates():
    torch.manual_seed(0)
    a = torch.randn(3, 4, dtype=torch.float64)
    critic = quadratic_critic(a)
    real, fake = torch.randn(6, 3, 4, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    torch.manual_seed(1)
    penalty = gradient_penalty(critic, real, fake)
    torch.manual_seed(1)  # the same mixing weights, drawn as gradient_penalty draws them
    mix = torch.rand(6, 1, 1, dtype=torch.float64)
    interpolates = (mix * real + (1 - mix) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(interpolates).sum(), interpolates)
    expected = (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-10)
    # and the gradient is the known one, 2 a x_hat
    torch.testing.assert_close(gradient, 2 * a * interpolates.detach())

"""Adversarial losses against their closed forms; R1 and the gradient penalty against
``torch.autograd.grad`` on functions whose input gradients are known."""

import math

import pytest
import torch

from mmgen_lightning.losses import (ADVERSARIAL_LOSSES, discriminator_loss, generator_loss, gradient_penalty,
                                    input_gradient_norms, r1_penalty)

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

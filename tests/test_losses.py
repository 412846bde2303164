"""VAE maths against closed forms and Monte-Carlo estimates."""

import math

import torch

from mmgen_lightning.losses import (continuous_log_likelihood, gaussian_log_density, kl_standard_normal, kl_weight,
                                    log_mean_exp, mixture_log_density, product_of_experts, reparameterize)


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

"""FID, KID, IS and precision/recall against closed forms and torchmetrics' own numbers."""

from __future__ import annotations

import math

import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from mmgen_lightning.metrics.quality import PrecisionRecall, SampleQuality, frechet_distance, gaussian_statistics


def exact_gaussian_samples(mean: torch.Tensor, covariance: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` samples whose empirical mean and (unbiased) covariance are exactly ``mean`` and ``covariance``."""
    z = torch.randn(count, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: covariance exactly I
    return mean + z @ torch.linalg.cholesky(covariance).T


def commuting_covariances(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two covariances sharing eigenvectors ``R``: ``R diag(a) R^T`` and ``R diag(b) R^T``."""
    generator = torch.Generator().manual_seed(1)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    a = torch.linspace(0.5, 3.0, dim, dtype=torch.float64)
    b = torch.linspace(2.0, 0.2, dim, dtype=torch.float64)
    return rotation @ torch.diag(a) @ rotation.T, rotation @ torch.diag(b) @ rotation.T, a, b


def quality_of(real: torch.Tensor, fake: torch.Tensor, chunk: int = 64, **kwargs) -> dict[str, float]:
    metric = SampleQuality(real.shape[1], kid_subset_size=min(len(real), len(fake)), kid_subsets=1, **kwargs)
    for part in real.split(chunk):
        metric.update(part, real=True)
    for part in fake.split(chunk):
        metric.update(part, real=False)
    return metric.compute()


def test_fid_of_a_set_against_itself_is_zero():
    features = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    scores = quality_of(features, features.clone())
    assert abs(scores["fid"]) < 1e-6
    assert abs(scores["kid"]) < 0.05  # unbiased: near 0, either sign
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["density"] == pytest.approx(6 / 5)  # each real ball holds its copy and k=5 neighbours' copies


def test_fid_on_gaussian_features_equals_the_closed_form():
    dim = 6
    sigma1, sigma2, a, b = commuting_covariances(dim)
    mu1, mu2 = torch.zeros(dim, dtype=torch.float64), torch.linspace(-1, 1, dim, dtype=torch.float64)
    # commuting covariances: Tr (S1 S2)^(1/2) = sum sqrt(a b), so FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    closed_form = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    real = exact_gaussian_samples(mu1, sigma1, 500, seed=2)
    fake = exact_gaussian_samples(mu2, sigma2, 400, seed=3)
    assert quality_of(real, fake)["fid"] == pytest.approx(closed_form.item(), rel=1e-6)
    assert frechet_distance(mu1, sigma1, mu2, sigma2).item() == pytest.approx(closed_form.item(), rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_any_covariances():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    sigma1, sigma2 = x @ x.T + 0.1 * torch.eye(8), y @ y.T
    mu1, mu2 = torch.randn(8, generator=generator, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    root = scipy.linalg.sqrtm(sigma1.numpy() @ sigma2.numpy()).real
    expected = (mu1 - mu2).square().sum().item() + (sigma1.trace() + sigma2.trace()).item() - 2 * root.trace()
    assert frechet_distance(mu1, sigma1, mu2, sigma2).item() == pytest.approx(expected, rel=1e-8)


def test_our_fid_equals_torchmetrics_on_the_same_features():
    generator = torch.Generator().manual_seed(5)
    real = torch.randn(256, 32, generator=generator) * 2 + 1
    fake = torch.randn(200, 32, generator=generator) @ torch.randn(32, 32, generator=generator) * 0.3

    class Given(torch.nn.Module):
        num_features = 32

        def forward(self, x):
            return x

    reference = FrechetInceptionDistance(feature=Given())
    reference.update(real.double(), real=True)
    reference.update(fake.double(), real=False)
    expected = reference.compute().item()
    assert quality_of(real, fake)["fid"] == pytest.approx(expected, rel=1e-6)
    ours = frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake)).item()
    assert ours == pytest.approx(expected, rel=1e-6)


def test_kid_is_unbiased_on_a_toy():
    """KID's expectation over small samples is the population MMD^2, for equal and different distributions;
    the biased V-statistic (diagonal kept) is off by many standard errors, so the test can tell."""
    generator = torch.Generator().manual_seed(6)
    support_p = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    support_q = support_p + 0.7

    def kernel(x, y):
        return (x @ y.T / 3 + 1) ** 3

    def population(p, q):  # x, x' independent draws from a uniform finite support: every pair, diagonal included
        return (kernel(p, p).mean() + kernel(q, q).mean() - 2 * kernel(p, q).mean()).item()

    size, repeats = 6, 300
    metric = SampleQuality(3, kid_subset_size=size, kid_subsets=1)
    for p, q in ((support_p, support_p), (support_p, support_q)):
        estimates, biased = [], []
        for _ in range(repeats):
            x = p[torch.randint(len(p), (size,), generator=generator)]
            y = q[torch.randint(len(q), (size,), generator=generator)]
            metric.reset()
            metric.update(x, real=True)
            metric.update(y, real=False)
            estimates.append(metric.compute()["kid"])
            biased.append((kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()).item())
        estimates, biased = torch.tensor(estimates), torch.tensor(biased)
        error = estimates.std().item() / math.sqrt(repeats)
        truth = population(p, q)
        assert abs(estimates.mean().item() - truth) < 4 * error, (estimates.mean().item(), truth, error)
        assert abs(biased.mean().item() - truth) > 8 * error


def test_precision_recall_density_coverage_on_disjoint_and_partial_sets():
    generator = torch.Generator().manual_seed(7)
    real = torch.randn(200, 4, generator=generator)
    far = PrecisionRecall(nearest_k=5)
    far.update(real, real=True)
    far.update(real + 100, real=False)
    assert {k: v.item() for k, v in far.compute().items()} == {"precision": 0.0, "recall": 0.0, "density": 0.0,
                                                                 "coverage": 0.0}
    # generated samples on half of the real manifold only: precise, but half the recall and coverage
    half = PrecisionRecall(nearest_k=5)
    half.update(real, real=True)
    half.update(real[real[:, 0] > 0], real=False)
    scores = half.compute()
    assert scores["precision"] == 1.0
    assert 0.3 < scores["recall"] < 0.75 and 0.3 < scores["coverage"] < 0.75


def test_inception_score_of_judge_logits():
    # confident, evenly spread classes: IS = number of classes; one class only: IS = 1
    logits = torch.eye(4).repeat(25, 1) * 50
    spread = SampleQuality(4, num_classes=4, kid_subset_size=100, kid_subsets=1)
    spread.update(torch.randn(100, 4), real=True)
    spread.update(torch.randn(100, 4), real=False, logits=logits)
    assert spread.compute()["inception_score"] == pytest.approx(4.0, rel=1e-4)
    single = SampleQuality(4, num_classes=4, kid_subset_size=100, kid_subsets=1)
    single.update(torch.randn(100, 4), real=True)
    single.update(torch.randn(100, 4), real=False, logits=torch.zeros(100, 4).index_fill_(1, torch.tensor([2]), 50.0))
    assert single.compute()["inception_score"] == pytest.approx(1.0, rel=1e-4)

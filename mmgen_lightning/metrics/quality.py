"""Sample quality of a set of generated samples against real ones, in a feature space.

:class:`SampleQuality` gathers, from features computed once per batch (``metrics.features``):

- FID (Heusel et al. 2017): ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``;
- KID (Binkowski et al. 2018): the unbiased MMD^2 estimate under the kernel
  ``(x.y / d + 1)^3``, averaged over random subsets;
- IS (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` from the extractor's logits;
- precision and recall of k-NN manifolds (Kynkäänniemi et al. 2019) and density and coverage
  (Naeem et al. 2020).

FID, KID and IS are torchmetrics' own metrics (fed through an identity feature module), so the
numbers are torchmetrics' numbers; every state is a torchmetrics state, so under DDP each process
updates with its share and ``compute`` gathers them. Random subsets (KID) are drawn from a fixed
seed, so a report is reproducible and a 2-process run gives the 1-process numbers.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat


def gaussian_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``D`` and unbiased covariance ``D,D`` of ``N,D`` features, in float64."""
    features = features.double()
    return features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^(1/2) S2 S1^(1/2))^(1/2))``, the Fréchet (2-Wasserstein)
    distance between ``N(mu1, S1)`` and ``N(mu2, S2)``, in float64.

    ``Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2)``; the right side is a symmetric PSD matrix, so
    its square root comes from ``eigh`` (no complex parts to drop, unlike ``sqrtm(S1 S2)``).
    """
    mu1, mu2, sigma1, sigma2 = mu1.double(), mu2.double(), sigma1.double(), sigma2.double()
    values, vectors = torch.linalg.eigh(sigma1)
    root1 = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = root1 @ sigma2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_root


class PrecisionRecall(Metric):
    """k-NN manifold metrics of generated features against real ones (values in [0, 1], density >= 0).

    ``r_k(x)`` is the distance from ``x`` to its k-th nearest neighbour in its own set.

    - precision: share of generated samples inside some real sample's ball ``B(x_r, r_k(x_r))``;
    - recall: share of real samples inside some generated sample's ball;
    - density: ``1/(k M) sum_g #{real x_r : g in B(x_r, r_k(x_r))}`` (1 for matching distributions);
    - coverage: share of real samples whose ball holds at least one generated sample.

    Args:
        nearest_k: ``k`` (5, as in Naeem et al. 2020).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, nearest_k: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        if nearest_k < 1:
            raise ValueError(f"nearest_k must be >= 1, got {nearest_k}")
        self.nearest_k = nearest_k
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        (self.real_features if real else self.fake_features).append(features.float())

    def compute(self) -> dict[str, Tensor]:
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        k = self.nearest_k
        if min(len(real), len(fake)) <= k:
            raise ValueError(f"precision/recall need more than nearest_k={k} real and generated samples, "
                             f"got {len(real)} and {len(fake)}")
        real_radii, fake_radii = self._radii(real), self._radii(fake)
        distances = torch.cdist(fake, real)  # M,N
        inside_real = distances <= real_radii[None, :]
        return {"precision": inside_real.any(1).float().mean(),
                "recall": (distances <= fake_radii[:, None]).any(0).float().mean(),
                "density": inside_real.sum().float() / (k * len(fake)),
                "coverage": (distances.amin(0) < real_radii).float().mean()}

    def _radii(self, features: Tensor) -> Tensor:
        # the k+1-th smallest distance: the smallest is the point itself
        return torch.cdist(features, features).kthvalue(self.nearest_k + 1, dim=1).values


class _Given(nn.Module):
    """Lets torchmetrics' image metrics take precomputed features: returns its input."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class SampleQuality(nn.Module):
    """FID, KID, IS and precision/recall/density/coverage of one set of samples, from features.

    Args:
        num_features: size ``D`` of the features.
        num_classes: size of the logits for IS (``None``: no IS).
        kid_subset_size: samples per KID subset; at most the number of real and of generated samples.
        kid_subsets: KID subsets averaged.
        nearest_k: ``k`` of precision/recall/density/coverage.
        seed: seeds the KID subsets.
    """

    def __init__(self, num_features: int, num_classes: int | None = None, kid_subset_size: int = 1000,
                 kid_subsets: int = 50, nearest_k: int = 5, seed: int = 0) -> None:
        super().__init__()
        with warnings.catch_warnings():  # both warn that they keep every feature: that is the point here
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.fid = FrechetInceptionDistance(feature=_Given(num_features))
            self.kid = KernelInceptionDistance(feature=_Given(num_features), subsets=kid_subsets,
                                               subset_size=kid_subset_size)
            self.inception_score = InceptionScore(feature=_Given(num_classes), splits=1) if num_classes else None
        self.coverage = PrecisionRecall(nearest_k)
        self.seed = seed

    def update(self, features: Tensor, real: bool, logits: Tensor | None = None) -> None:
        """``features: B,D`` of real or generated samples; ``logits: B,C`` of generated ones, for IS."""
        features = features.double()  # FID's sums are float64; KID and k-NN need no less
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)
        self.coverage.update(features, real=real)
        if not real and self.inception_score is not None and logits is not None:
            self.inception_score.update(logits.double())

    def reset(self) -> None:
        for metric in (self.fid, self.kid, self.inception_score, self.coverage):
            if metric is not None:
                metric.reset()

    def compute(self) -> dict[str, float]:
        """Every metric, gathered over processes. Call it on every process, in the same order."""
        out = {"fid": self.fid.compute().item()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        out.update({"kid": kid_mean.item(), "kid_std": kid_std.item()})
        if self.inception_score is not None:
            with warnings.catch_warnings():  # one split: its standard deviation is undefined, and unused
                warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
                out["inception_score"] = self.inception_score.compute()[0].item()
        out.update({k: v.item() for k, v in self.coverage.compute().items()})
        return out

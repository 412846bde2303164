"""Likelihood metrics: the IWAE NLL and bits/dim against closed forms, and DDP-summable states."""

from __future__ import annotations

import math

import pytest
import torch

from mmgen_lightning.metrics.likelihood import LikelihoodMetric, bits_per_dim, iwae_nll
from mmgen_lightning.models.base import scored_dimensions


def test_iwae_nll_is_minus_log_mean_importance_weight():
    weights = torch.tensor([[0.5, 2.0], [1.5, 4.0]])  # K=2, B=2
    nll = iwae_nll(weights.log())
    assert nll.tolist() == pytest.approx([-math.log(1.0), -math.log(3.0)], abs=1e-6)


def test_bits_per_dim_of_a_uniform_byte_is_eight():
    # a uniform distribution over 256 values costs log(256) nats per value: 8 bits
    assert bits_per_dim(100 * math.log(256), 100) == pytest.approx(8.0)


def test_likelihood_metric_sums_samples_and_dimensions():
    metric = LikelihoodMetric()
    metric.update(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0]))
    metric.update(torch.tensor([6.0]), torch.tensor([2.0]))
    scores = metric.compute()
    assert scores["nll_nats_per_sample"].item() == pytest.approx(4.0)
    assert scores["bits_per_dim"].item() == pytest.approx(12.0 / 4.0 / math.log(2))
    assert int(scores["samples"]) == 3


def test_scored_dimensions_count_pixels_real_tokens_and_labels():
    batch = {"image": torch.zeros(2, 1, 4, 4), "text": torch.zeros(2, 5, dtype=torch.long),
             "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
             "label": torch.zeros(2, dtype=torch.long)}
    dims = scored_dimensions(batch, ["image", "text", "label"])
    assert dims.tolist() == [16 + 2 + 1, 16 + 4 + 1]  # tokens after [BOS]

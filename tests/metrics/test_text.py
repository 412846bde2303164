"""BLEU and chrF of captions against their references, through torchmetrics."""

from __future__ import annotations

import pytest

from mmgen_lightning.metrics.text import TextQuality


def test_identical_captions_score_one_and_unrelated_ones_near_zero():
    same = TextQuality()
    captions = ["a picture of the number seven", "a small red circle on the left moving up"]
    same.update(captions, captions)
    assert same.compute() == {"bleu": pytest.approx(1.0), "chrf": pytest.approx(1.0)}
    other = TextQuality()
    other.update(["zzz qqq"], ["a handwritten seven"])
    scores = other.compute()
    assert scores["bleu"] < 0.1 and scores["chrf"] < 0.1


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        TextQuality().update(["a", "b"], ["a"])

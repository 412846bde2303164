"""Coherence of real data against itself is the judge's accuracy; captions are read by the dataset's parser."""

from __future__ import annotations

import pytest
import torch

from mmgen_lightning.metrics.coherence import AttributeAgreement, compared_attributes
from mmgen_lightning.metrics.evaluator import RealData, coherence
from mmgen_lightning.metrics.judges import held_out_accuracy


def test_coherence_of_real_data_against_itself_equals_judge_accuracy(digits, digits_judge):
    judge_accuracy = held_out_accuracy(digits_judge, digits, "test")["digit"]
    for direction in ("text->image", "label->image"):
        row = coherence(RealData(), digits, direction, {"image": digits_judge}, split="test")
        assert row["samples"] == len(digits.dataset("test"))
        assert row["accuracy"] == pytest.approx(judge_accuracy) == row["real_data"]
    # captions are parsed, not judged: real captions state the digit exactly
    assert coherence(RealData(), digits, "image->text", {}, split="test")["accuracy"] == 1.0


def test_compared_attributes_are_shown_by_the_target_and_stated_by_a_source(digits):
    from mmgen_lightning.datamodules.shapes import ShapesDataModule

    shapes = ShapesDataModule(modalities=["image", "text", "audio", "video", "label"])
    assert compared_attributes(shapes, "text->image") == ["shape", "color", "size", "position"]
    assert compared_attributes(shapes, "text->video") == ["shape", "color", "size", "position", "motion"]
    assert compared_attributes(shapes, "label->video") == ["shape"]
    assert compared_attributes(shapes, "image+label->text") == ["shape", "color", "size", "position"]
    assert compared_attributes(digits, "image->text") == ["digit"]  # no video: captions state no motion
    with pytest.raises(ValueError, match="no attribute is observable on both sides"):
        coherence(RealData(), digits, "->image", {}, split="test")


def test_attribute_agreement_counts_each_attribute_and_all_at_once():
    metric = AttributeAgreement(2)
    metric.update(torch.tensor([[1, 2], [1, 0], [3, 0]]), torch.tensor([[1, 2], [1, 2], [1, 0]]))
    scores = metric.compute()
    assert scores["accuracy"].item() == pytest.approx(1 / 3)
    assert scores["per_attribute"].tolist() == pytest.approx([2 / 3, 2 / 3])


def test_a_datamodule_describes_its_own_attributes_and_metrics_name_no_dataset():
    from mmgen_lightning.datamodules.attributes import AttributeReading
    from mmgen_lightning.metrics.coherence import read_attributes
    from tests.conftest import WORDS, ToyDataModule

    class Described(ToyDataModule):
        attribute_reading = AttributeReading(
            judged={"image": ("digit",)},
            parse_caption=lambda text: {"digit": WORDS.index(text.split()[-1])} if text.split()[-1] in WORDS else None)

    described = Described(modalities=["image", "text", "label"])
    assert compared_attributes(described, "text->image") == ["digit"]
    assert compared_attributes(described, "image->text") == ["digit"]
    with pytest.raises(ValueError, match="no attribute is observable on both sides"):  # no judge reads audio here
        coherence(RealData(), Described(modalities=["image", "audio"]), "image->audio", {}, split="test")
    captions = described.tokenizer.encode(["class two", "class zero", "class cat"])
    read = read_attributes(captions, "text", described.data_spec, {}, described.tokenizer,
                           described.attribute_reading)
    assert read.tolist() == [[2], [0], [-1]]  # the datamodule's own parser; -1 where it reads nothing
    assert compared_attributes(ToyDataModule(modalities=["image", "text"]), "text->image") == []  # nothing declared

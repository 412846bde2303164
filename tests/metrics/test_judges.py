"""Judges read real held-out data (almost) perfectly, are trained once, and are cached per configuration."""

from __future__ import annotations

import pytest
import torch

from mmgen_lightning.datamodules.shapes import ShapesDataModule
from mmgen_lightning.metrics.judges import get_judge, held_out_accuracy, judge_key, judge_path


def test_digits_image_judge_reads_held_out_digits(digits, digits_judge):
    accuracy = held_out_accuracy(digits_judge, digits, "test")
    assert accuracy["digit"] >= 0.98, accuracy
    assert accuracy["samples"] == len(digits.dataset("test"))


def test_shapes_image_judge_reads_every_attribute(judge_cache):
    from mmgen_lightning.metrics.judges import Recipe, train_judge

    # a shorter run than the cached judges' recipe (benchmarks/judges.py measures those), same training
    shapes = ShapesDataModule(modalities=["image"], train_size=1500, test_size=300)
    judge = train_judge(shapes, "image", recipe=Recipe(steps=200, max_items=1500))
    accuracy = held_out_accuracy(judge, shapes, "test")
    for name in ("shape", "color", "size", "position"):
        assert accuracy[name] >= 0.95, accuracy


def test_judge_is_trained_once_and_loaded_from_the_cache(digits, digits_judge, judge_cache):
    path = judge_path(digits, "image")
    assert path.is_file() and path.parent.parent == judge_cache
    stamp = path.stat().st_mtime_ns
    again = get_judge(digits, "image")
    assert path.stat().st_mtime_ns == stamp
    for mine, theirs in zip(digits_judge.state_dict().values(), again.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_cache_key_follows_the_data_configuration_not_the_loading(digits):
    from mmgen_lightning.datamodules.digits import DigitsDataModule

    same_data = DigitsDataModule(modalities=["image"], batch_size=7, num_workers=0)
    assert judge_key(same_data, "image", 0) == judge_key(digits, "image", 0)
    assert judge_key(DigitsDataModule(modalities=["image"], seed=1), "image", 0) != judge_key(digits, "image", 0)
    larger = DigitsDataModule(modalities=["image"], image_size=32, video_canvas=64)
    assert judge_key(larger, "image", 0) != judge_key(digits, "image", 0)
    assert judge_key(digits, "image", 1) != judge_key(digits, "image", 0)


def test_training_a_judge_leaves_the_global_random_state_alone(judge_cache):
    shapes = ShapesDataModule(modalities=["image"], image_size=16, train_size=64, val_size=8, test_size=8)
    from mmgen_lightning.metrics.judges import Recipe, train_judge

    state = torch.random.get_rng_state()
    train_judge(shapes, "image", recipe=Recipe(steps=2, max_items=64))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_no_judge_for_an_unknown_dataset_or_modality(toy_datamodule):
    with pytest.raises(ValueError, match="no judge for 'image' on dataset 'toy'"):
        get_judge(toy_datamodule, "image")

"""The readers' scores of scenes (``metrics/scenes.py``): swapped twins mean something else and are never true
of their image; the ARO-style accuracy is 1 for a reader that knows each real render's truth (the ceiling),
exactly 0.5 for a bag of words and 0 for a reader that prefers the twin; the captioning accuracy is 1 for
the real captions and near 0 for a captioner that describes another image or a twin."""

import numpy as np
import pytest
import torch

from mmgen_lightning.datamodules import ScenesDataModule
from mmgen_lightning.datamodules.scenes import COLORS, SHAPES, caption_text, match_scene, parse_scene_caption
from mmgen_lightning.metrics.scenes import (TWINS, caption_accuracy, hard_negative_accuracy, states_scene,
                                            swapped_twins, wording_of)

ITEMS = 120


@pytest.fixture(scope="module")
def scenes():
    return ScenesDataModule(train_size=100, val_size=10, test_size=ITEMS, heldout_size=ITEMS)


@pytest.fixture(scope="module")
def truth(scenes):
    """Each real render of the two splits (its bytes) -> its scene: a reader that knows the truth."""
    table = {}
    for split in ("test", "heldout"):
        dataset = scenes.dataset(split)
        table.update({dataset[i]["image"].numpy().tobytes(): dataset.scene(i) for i in range(ITEMS)})
    return table


def scene_of(truth, image):
    return truth[image.numpy().tobytes()]


def test_twins_swap_colours_shapes_and_the_relation_and_differ_from_the_caption(scenes):
    caption = parse_scene_caption("a large red circle to the left of a blue square")
    twins = {name: caption_text(twin) for name, twin in swapped_twins(caption).items()}
    assert twins == {"color_swap": "a large blue circle to the left of a red square",
                     "shape_swap": "a large red square to the left of a blue circle",
                     "relation_reversed": "a large red circle to the right of a blue square"}
    # a binding of one colour and one size: the shape swap names the same pair, so it is no twin
    assert list(swapped_twins(parse_scene_caption("a red circle and a red square"))) == []
    assert list(swapped_twins(parse_scene_caption("a small red circle and a red square"))) == ["shape_swap"]
    assert swapped_twins(parse_scene_caption("three red circles")) == {}
    dataset = scenes.dataset("test")
    true_twins = 0
    for index in range(ITEMS):
        scene = dataset.scene(index)
        assert caption_text(scene.caption, wording_of(scene)) == scene.text
        for twin in swapped_twins(scene.caption).values():
            assert twin != scene.caption
            true_twins += match_scene(twin, scene.objects) is not None
    # only a free size drawn equal to the stated one makes a twin true (hard_negative_accuracy skips those)
    assert true_twins < ITEMS // 20


def test_hard_negative_accuracy_is_one_for_the_truth_one_half_for_a_bag_of_words_and_zero_reversed(scenes, truth):
    def oracle(images, captions):
        return torch.tensor([float(match_scene(parse_scene_caption(text), scene_of(truth, image).objects) is not None)
                             for image, text in zip(images, captions)])

    def bag_of_words(images, captions):  # how many of the caption's colour and shape words the image shows
        scores = []
        for image, text in zip(images, captions):
            shown = {word for found in scene_of(truth, image).objects
                     for word in (COLORS[found.color], SHAPES[found.shape])}
            scores.append(float(sum(word in shown for word in text.split())))
        return torch.tensor(scores)

    for split in ("test", "heldout"):
        right = hard_negative_accuracy(oracle, scenes, split, ITEMS, batch_size=16)
        assert right["accuracy"] == 1.0 and right["pairs"] > ITEMS // 2
        assert sum(row["pairs"] for row in right["per_twin"].values()) == right["pairs"]
        assert all(right["per_twin"][twin]["pairs"] > 0 for twin in TWINS)
        assert right["per_kind"]["relation"]["pairs"] + right["per_kind"]["binding"]["pairs"] == right["pairs"]
        assert hard_negative_accuracy(bag_of_words, scenes, split, ITEMS)["accuracy"] == 0.5
        assert hard_negative_accuracy(lambda i, c: -oracle(i, c), scenes, split, ITEMS)["accuracy"] == 0.0


def test_caption_accuracy_is_one_for_real_captions_and_low_for_wrong_ones(scenes, truth):
    def real(images):
        return [scene_of(truth, image).text for image in images]

    def another_image(images):  # each image described by the next image's caption
        return real(images)[1:] + real(images)[:1]

    def twin(images):  # a twin false of the image where there is one, free text where not
        out = []
        for image in images:
            scene = scene_of(truth, image)
            twins = [t for t in swapped_twins(scene.caption).values() if match_scene(t, scene.objects) is None]
            out.append(caption_text(twins[0]) if twins else "a picture of nothing")
        return out

    for split in ("heldout", "test"):
        assert caption_accuracy(real, scenes, split, ITEMS, batch_size=32)["accuracy"] == 1.0
        wrong = caption_accuracy(another_image, scenes, split, ITEMS, batch_size=32)
        assert wrong["accuracy"] < 0.1 and len(wrong["mistakes"]) == 10
        assert caption_accuracy(twin, scenes, split, ITEMS)["accuracy"] == 0.0


def test_a_caption_must_state_the_relation_of_a_relation_image(scenes):
    dataset = scenes.dataset("test")
    scene = next(dataset.scene(i) for i in range(ITEMS) if dataset.scene(i).caption.kind == "relation")
    first, second = scene.caption.objects
    both = f"a {COLORS[first.color]} {SHAPES[first.shape]} and a {COLORS[second.color]} {SHAPES[second.shape]}"
    assert not states_scene(both, scene)  # the objects, but not where they stand
    assert states_scene(caption_text(scene.caption), scene)
    assert not states_scene("a red", scene) and not states_scene("hello world", scene)
    counted = next(dataset.scene(i) for i in range(ITEMS) if len(dataset.scene(i).objects) == 2
                   and dataset.scene(i).caption.kind == "counting")
    named = counted.caption.objects[0]
    assert states_scene(f"a {COLORS[named.color]} {SHAPES[named.shape]} and a {COLORS[named.color]} "
                        f"{SHAPES[named.shape]}", counted)
    assert np.isclose(caption_accuracy(lambda images: ["two"] * len(images), scenes, "test", 8)["accuracy"], 0.0)

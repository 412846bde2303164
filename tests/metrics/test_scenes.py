"""The scenes judge reads real renders (clean and softened) right, and the GenEval-style table scores
real renders at the ceiling, a generator of the wrong captions low, and a generator that always puts an
object in the same place as right but without variety."""

import numpy as np
import pytest
import torch

from mmgen_lightning.datamodules import ScenesDataModule
from mmgen_lightning.datamodules.scenes import (KINDS, Named, Scene, SceneCaption, SceneObject, draw_scene, match_scene,
                                                parse_scene_caption, render_scene)
from mmgen_lightning.metrics.scene_judge import degrade, find_regions, get_scene_judge, scene_judge_path
from mmgen_lightning.metrics.scenes import (ROWS, RealScenes, evaluate_scenes, model_sampler, score_split,
                                            scenes_markdown, shows_named_shapes)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes():
    return ScenesDataModule(train_size=2000, val_size=100, test_size=200, heldout_size=200)


@pytest.fixture(scope="module")
def judge(scenes, judge_cache):
    return get_scene_judge(scenes)


def read_right(judge, dataset, images) -> float:
    """Share of images whose reading is their scene: the same objects, centroids within a pixel."""
    right = []
    for index, seen in enumerate(judge.read(images)):
        truth = dataset.scene(index).objects
        right.append(len(seen) == len(truth) and all(
            any((s.shape, s.color, s.size) == (t.shape, t.color, t.size) and np.hypot(s.x - t.x, s.y - t.y) * 64 < 1
                for s in seen) for t in truth))
    return float(np.mean(right))


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_judge_reads_real_renders_and_mildly_softened_ones(scenes, judge, split):
    dataset = scenes.dataset(split)
    images = torch.stack([dataset[i]["image"] for i in range(200)])
    assert read_right(judge, dataset, images) >= 0.99
    softened = degrade(images, blur=0.8, noise=0.05, color_shift=0.1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(softened, images, atol=0.02)
    assert read_right(judge, dataset, softened) >= 0.98


def test_judge_is_cached_and_reloads_the_same(scenes, judge, judge_cache):
    path = scene_judge_path(scenes)
    assert path.is_file() and path.is_relative_to(judge_cache)
    again = get_scene_judge(scenes)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))
    assert scene_judge_path(ScenesDataModule(seed=1, train_size=2000)) != path


def test_an_empty_canvas_has_no_objects_and_touching_objects_of_two_colours_are_two(judge):
    assert judge.read(-torch.ones(2, 3, 64, 64)) == [(), ()]
    image = -np.ones((3, 64, 64), dtype=np.float32)
    image[:, 20:30, 20:30] = np.array([1.0, -0.8, -0.8])[:, None, None]  # red
    image[:, 20:30, 30:40] = np.array([-0.8, -0.8, 1.0])[:, None, None]  # blue, touching it
    regions = find_regions(image)
    assert sorted(r.color for r in regions) == [0, 2]
    assert sorted(round(r.x * 64) for r in regions) == [25, 35]
    with pytest.raises(ValueError, match="images must be B,3,64,64"):
        judge.read(torch.zeros(1, 3, 32, 32))


def test_degrade_keeps_the_range_and_does_nothing_at_zero_severity():
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    assert torch.equal(degrade(images), images)
    out = degrade(images, blur=1.0, noise=0.3, color_shift=0.2)
    assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1


def test_two_objects_reads_shapes_only():
    caption = parse_scene_caption("a red circle to the left of a blue square")
    assert shows_named_shapes(caption, (SceneObject(1, 3, 0, 0.1, 0.1), SceneObject(0, 5, 1, 0.9, 0.9),
                                        SceneObject(2, 1, 0, 0.5, 0.5)))
    assert not shows_named_shapes(caption, (SceneObject(0, 0, 0, 0.1, 0.1), SceneObject(0, 2, 0, 0.9, 0.9)))


@pytest.fixture(scope="module")
def real_report(scenes, judge):
    return evaluate_scenes(RealScenes(), scenes, judge, num_captions=32, samples_per_caption=6, batch_size=96,
                           ceiling=False)


def test_real_renders_score_the_ceiling_with_the_real_variety(real_report):
    for group in ("seen", "heldout"):
        result = real_report[group]
        assert result["samples"] == 32 * 6 and result["samples_per_kind"] == {kind: 48 for kind in KINDS}
        assert all(result["accuracy"][row] >= 0.98 for row in ROWS), result["accuracy"]
        assert all(0.7 <= result["spread"][kind] <= 1.3 for kind in KINDS), result["spread"]


def test_a_generator_of_the_wrong_captions_scores_low(scenes, judge):
    real = RealScenes()
    others = {text: scenes.dataset("val").scene(i).text for i, text in
              enumerate(scenes.dataset("test").scene(i).text for i in range(32))}

    def wrong(captions: list[str]) -> torch.Tensor:  # another caption's scene for every caption
        return real([others[text] for text in captions])

    result = score_split(wrong, scenes, judge, "test", num_captions=32, samples_per_caption=4)
    assert result["accuracy"]["overall"] <= 0.15, result["accuracy"]


def test_a_generator_without_variety_is_right_but_has_no_spread(scenes, judge):
    def fixed(captions: list[str]) -> torch.Tensor:  # the same scene for a caption, every time
        return torch.stack([torch.from_numpy(render_scene(draw_scene(parse_scene_caption(text),
                                                                     np.random.default_rng(len(text)))))
                            for text in captions])

    result = score_split(fixed, scenes, judge, "heldout", num_captions=16, samples_per_caption=4)
    assert result["accuracy"]["overall"] >= 0.98
    assert all(result["spread"][kind] < 0.05 for kind in KINDS), result["spread"]


def test_swapped_colours_fail_binding_but_keep_two_objects(scenes, judge):
    caption = parse_scene_caption("a red circle and a blue square")
    swapped = SceneCaption("binding", (Named(0, 2), Named(1, 0)))

    def swap(captions: list[str]) -> torch.Tensor:
        rng = np.random.default_rng(0)
        return torch.stack([torch.from_numpy(render_scene(draw_scene(swapped, rng))) for _ in captions])

    images = swap(["a red circle and a blue square"] * 4)
    for objects in judge.read(images):
        assert match_scene(caption, objects) is None and shows_named_shapes(caption, objects)


def test_model_sampler_asks_generate_for_images_of_the_encoded_captions(scenes):
    calls = []

    class Model:
        tokenizer = scenes.tokenizer

        def generate(self, conditions, num_samples, to=None, **sampling):
            calls.append((conditions, num_samples, to, sampling))
            return {"image": -torch.ones(num_samples, 3, 64, 64)}

    images = model_sampler(Model(), steps=5)(["a red circle", "two blue squares"])
    conditions, num_samples, to, sampling = calls[0]
    assert images.shape == (2, 3, 64, 64) and num_samples == 2 and to == "image" and sampling == {"steps": 5}
    assert scenes.tokenizer.decode(conditions["text"]) == ["a red circle", "two blue squares"]


def test_markdown_has_a_row_per_kind_and_the_ceiling_columns(real_report):
    table = scenes_markdown({**real_report, "real": real_report})
    assert "| caption kind | seen | held-out | seen, real renders | held-out, real renders |" in table
    for row in ("single", "two objects", "relation", "binding", "counting", "overall"):
        assert f"| {row} | 1.000 |" in table or f"| {row} | 0.9" in table, table


def test_scene_renders_and_judge_agree_on_a_hand_made_scene(judge):
    caption = parse_scene_caption("a small yellow triangle above a large purple diamond")
    scene = Scene(caption, "", (SceneObject(2, 3, 0, 0.5, 0.25), SceneObject(3, 4, 1, 0.45, 0.7)), (0.065, 0.105),
                  (1.0, 0.9))
    seen = judge.read(torch.from_numpy(render_scene(scene))[None])[0]
    assert match_scene(caption, seen) is not None

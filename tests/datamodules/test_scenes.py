"""ScenesDataModule: deterministic scenes whose captions are true of their images, held-out pairs
only in the heldout split, and a caption parser that names the word it cannot read."""

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import ScenesDataModule
from mmgen_lightning.datamodules.scenes import (ATTRIBUTE_NAMES, BOUNDING, GAP, HELDOUT_PAIRS, KINDS, RELATION_MARGIN,
                                                RELATIONS, TWINS, WORDINGS, FreeTextCaption, Named, Scene,
                                                SceneCaption, SceneObject, caption_text, draw_scene, match_scene,
                                                parse_scene_caption, relation_holds, render_scene, swapped_twins,
                                                wording_of)
from mmgen_lightning.datamodules.shapes import COLOR_RGB, SHAPES


def make(**kwargs):
    return ScenesDataModule(**{"train_size": 2000, "val_size": 400, "test_size": 400, "heldout_size": 400, **kwargs})


@pytest.fixture(scope="module")
def scenes():
    return make()


def test_items_are_a_pure_function_of_seed_split_and_index(scenes):
    train = scenes.dataset("train")
    again = make().dataset("train")
    for index in (0, 3, 17):
        for key, value in train[index].items():
            assert torch.equal(value, again[index][key]), key
    assert not torch.equal(train[0]["image"], make(seed=1).dataset("train")[0]["image"])
    firsts = {split: torch.stack([scenes.dataset(split)[i]["attributes"] for i in range(8)])
              for split in ("train", "val", "test", "heldout")}
    for a, b in itertools.combinations(firsts.values(), 2):
        assert not torch.equal(a, b)


def test_batches_follow_the_contract_and_the_documented_attribute_layout(scenes):
    batch = next(iter(DataLoader(scenes.dataset("val"), batch_size=8)))
    check_batch(batch)
    assert set(batch) == {"image", "text", "text_mask", "attributes"}
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["image"].min() == -1 and batch["image"].max() <= 1
    assert batch["text"].shape == batch["text_mask"].shape == (8, scenes.max_text_length)
    attributes = batch["attributes"]
    assert attributes.shape == (8, len(ATTRIBUTE_NAMES)) == (8, 27) and attributes.dtype == torch.long
    assert attributes[:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # the kind cycles with the index
    assert (attributes[:, 1] >= 0).tolist() == [False, True, False, False] * 2  # a relation only for relations
    dataset = scenes.dataset("val")
    for index, row in enumerate(attributes.tolist()):
        scene = dataset.scene(index)
        assert row[2] == len(scene.objects) == sum(row[3 + 6 * k] for k in range(4))
        for slot, found in enumerate(scene.objects):
            assert row[3 + 6 * slot:9 + 6 * slot] == [1, found.shape, found.color, found.size,
                                                      int(found.x * 64), int(found.y * 64)]
        for slot in range(len(scene.objects), 4):
            assert row[3 + 6 * slot:9 + 6 * slot] == [0, -1, -1, -1, -1, -1]
    assert (attributes < torch.tensor(scenes.data_spec["attribute_sizes"])).all() and (attributes >= -1).all()


def test_data_spec_sizes_a_family(scenes):
    spec = scenes.spec
    assert (spec.dataset, spec.image_size, spec.image_channels) == ("scenes", 64, 3)
    assert spec.vocab_size == scenes.tokenizer.vocab_size and spec.max_text_length == 24
    assert spec.attribute_names == list(ATTRIBUTE_NAMES) and len(spec.attribute_sizes) == len(ATTRIBUTE_NAMES)
    image_only = make(modalities=["image"])
    assert set(image_only.dataset("train")[0]) == {"image", "attributes"}


def test_heldout_pairs_are_on_no_train_val_or_test_object_and_on_every_heldout_caption_of_every_kind(scenes):
    for split in ("train", "val", "test"):
        dataset = scenes.dataset(split)
        for index in range(len(dataset)):
            scene = dataset.scene(index)
            assert not {(o.color, o.shape) for o in scene.objects} & set(HELDOUT_PAIRS), (split, scene.text)
    dataset = scenes.dataset("heldout")
    shown = {kind: set() for kind in KINDS}
    for index in range(len(dataset)):
        scene = dataset.scene(index)
        named = scene.caption.pairs & set(HELDOUT_PAIRS)
        assert named, scene.text
        shown[scene.caption.kind] |= named
    assert all(pairs == set(HELDOUT_PAIRS) for pairs in shown.values()), shown


def components(image: torch.Tensor) -> list[tuple[int, float, float]]:
    """(colour, centroid x, centroid y) of each connected lit region, read from the pixels alone."""
    value = ((image + 1) / 2).amax(0).numpy()
    labels, count = ndimage.label(value > 0.05)
    found = []
    for index in range(1, count + 1):
        rows, cols = np.nonzero(labels == index)
        rgb = ((image[:, rows, cols] + 1) / 2).numpy()
        weights = value[rows, cols]
        chroma = (rgb * weights).sum(1) / (rgb * weights).sum(1).max()
        color = int(np.argmin(((COLOR_RGB / COLOR_RGB.max(1, keepdims=True) - chroma) ** 2).sum(1)))
        found.append((color, float((cols + 0.5) @ weights / weights.sum() / 64),
                      float((rows + 0.5) @ weights / weights.sum() / 64)))
    return found


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_are_true_of_their_images(scenes, split):
    dataset = scenes.dataset(split)
    kinds = set()
    for index in range(120):
        scene, item = dataset.scene(index), dataset[index]
        text = scenes.tokenizer.decode(item["text"][None])[0]
        assert text == scene.text and parse_scene_caption(text) == scene.caption
        assert match_scene(scene.caption, scene.objects) == scene.objects, text
        # from the pixels: one lit region per object (nothing else, nothing touching), each the object's
        # colour at its centroid, so counts are exact and relations hold with their margin
        seen = components(item["image"])
        assert len(seen) == len(scene.objects), text
        for found in scene.objects:
            color, x, y = min(seen, key=lambda s: np.hypot(s[1] - found.x, s[2] - found.y))
            assert color == found.color and np.hypot(x - found.x, y - found.y) * 64 < 0.5, text
        if scene.caption.relation is not None:
            axis, sign = [(0, 1), (0, -1), (1, 1), (1, -1)][scene.caption.relation]
            first, second = (min(seen, key=lambda s: np.hypot(s[1] - o.x, s[2] - o.y)) for o in scene.objects)
            assert sign * (second[1 + axis] - first[1 + axis]) >= RELATION_MARGIN, text
        kinds.add(scene.caption.kind)
    assert kinds == set(KINDS)


def test_objects_never_overlap_and_stay_on_the_canvas(scenes):
    dataset = scenes.dataset("train")
    for index in range(0, 400, 3):
        scene = dataset.scene(index)
        alone = [render_scene(Scene(scene.caption, scene.text, (o,), (r,), (b,)))
                 for o, r, b in zip(scene.objects, scene.radii, scene.brightness)]
        lit = [(image > -1).any(0) for image in alone]
        for a, b in itertools.combinations(range(len(lit)), 2):
            assert not (ndimage.binary_dilation(lit[a]) & lit[b]).any(), scene.text  # a dark pixel between
            (oa, ra), (ob, rb) = (scene.objects[a], scene.radii[a]), (scene.objects[b], scene.radii[b])
            assert np.hypot(oa.x - ob.x, oa.y - ob.y) >= BOUNDING[oa.shape] * ra + BOUNDING[ob.shape] * rb + GAP
        for image in alone:  # the whole object is drawn: nothing lit on the border row or column
            lit_border = np.concatenate([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], axis=1)
            assert (lit_border == -1).all(), scene.text


def test_four_large_objects_of_any_shape_always_fit():
    for shape, seed in itertools.product(range(len(SHAPES)), range(25)):
        caption = SceneCaption("counting", (Named(shape, 0, 1),) * 4)
        scene = draw_scene(caption, np.random.default_rng(seed))
        assert match_scene(caption, scene.objects) is not None


def test_canonical_captions_are_among_the_training_captions(scenes):
    red_circle, blue_square = Named(0, 0), Named(1, 2)
    canonical = {
        "a large red circle": SceneCaption("single", (Named(0, 0, 1),)),
        "a red circle to the left of a blue square": SceneCaption("relation", (red_circle, blue_square), 0),
        "a red circle to the right of a blue square": SceneCaption("relation", (red_circle, blue_square), 1),
        "a red circle above a blue square": SceneCaption("relation", (red_circle, blue_square), 2),
        "a red circle below a blue square": SceneCaption("relation", (red_circle, blue_square), 3),
        "a red circle and a blue square": SceneCaption("binding", (red_circle, blue_square)),
        "three green triangles": SceneCaption("counting", (Named(2, 1),) * 3),
        "one red circle": SceneCaption("counting", (red_circle,)),
    }
    for text, caption in canonical.items():
        assert caption_text(caption) == text and parse_scene_caption(text) == caption
        assert "[UNK]" not in scenes.tokenizer.tokenizer.encode(text).tokens
    dataset = scenes.dataset("train")
    texts = [dataset.scene(i) for i in range(400)]
    for kind in KINDS:  # the training data draws the canonical wording of every kind, and others
        wordings = {s.text == caption_text(s.caption) for s in texts if s.caption.kind == kind}
        assert wordings == {True, False}, kind


def test_every_wording_parses_back():
    objects = [Named(s, c, z) for s, c, z in itertools.product(range(4), range(6), (None, 0, 1))]
    for named, wording in itertools.product(objects, range(WORDINGS)):
        other = Named((named.shape + 1) % 4, (named.color + 2) % 6, 1)
        captions = [SceneCaption("single", (named,)), SceneCaption("binding", (named, other)),
                    *(SceneCaption("counting", (named,) * n) for n in range(1, 5)),
                    *(SceneCaption("relation", (named, other), r) for r in range(len(RELATIONS)))]
        for caption in captions:
            assert parse_scene_caption(caption_text(caption, wording)) == caption


def test_parser_reads_more_than_the_data_writes():
    assert parse_scene_caption("An image of 3 big Cyan diamonds.") == SceneCaption("counting", (Named(3, 5, 1),) * 3)
    assert parse_scene_caption("a red circle, a blue square and a green triangle") == SceneCaption(
        "binding", (Named(0, 0), Named(1, 2), Named(2, 1)))
    assert parse_scene_caption("two red circles and a small blue square") == SceneCaption(
        "binding", (Named(0, 0), Named(0, 0), Named(1, 2, 0)))
    assert parse_scene_caption("the red circle under the blue square") == SceneCaption(
        "relation", (Named(0, 0), Named(1, 2)), 3)


@pytest.mark.parametrize("text, word", [
    ("a red hexagon", "'hexagon'"),
    ("a orange circle", "'orange'"),
    ("a large hexagon", "'hexagon'"),
    ("five red circles", "'five'"),
    ("7 blue squares", "'7'"),
    ("zero red circles", "'zero'"),
    ("a red circle and two blue squares and two green triangles", "5 objects"),
    ("four red circles and a blue square", "5 objects"),
    ("a circle", "'circle'"),
    ("a red", "'red'"),
    ("a big small red circle", "'small'"),
    ("a red circle on the left", "'on'"),
    ("a red circle above a blue square and a green triangle", "'above'"),
    ("two red circles to the left of a blue square", "'left of'"),
])
def test_parser_errors_are_one_line_naming_the_word(text, word):
    with pytest.raises(ValueError) as error:
        parse_scene_caption(text)
    message = str(error.value)
    assert not isinstance(error.value, FreeTextCaption)
    assert word in message and "\n" not in message and repr(text) in message


@pytest.mark.parametrize("text", ["a photo of a cat", "hello world", ""])
def test_free_text_is_its_own_error_to_warn_with(text):
    with pytest.raises(FreeTextCaption, match="not a scene caption") as error:
        parse_scene_caption(text)
    assert "\n" not in str(error.value)


def test_relations_hold_between_centroids_with_the_margin():
    left, right = SceneObject(0, 0, 0, 0.3, 0.5), SceneObject(1, 2, 0, 0.3 + RELATION_MARGIN, 0.9)
    assert relation_holds(0, left, right) and relation_holds(1, right, left)
    assert not relation_holds(1, left, right) and not relation_holds(0, right, left)
    assert relation_holds(2, left, right) and relation_holds(3, right, left)  # y grows downwards
    nudged = SceneObject(1, 2, 0, 0.3 + 0.9 * RELATION_MARGIN, 0.5)
    assert not relation_holds(0, left, nudged) and not relation_holds(2, left, nudged)


def test_match_scene_wants_exactly_the_named_objects():
    caption = parse_scene_caption("two small red circles")
    pair = (SceneObject(0, 0, 0, 0.7, 0.2), SceneObject(0, 0, 0, 0.2, 0.6))
    assert match_scene(caption, pair) == pair[::-1]  # a counted group comes back left to right
    assert match_scene(caption, pair[:1]) is None
    assert match_scene(caption, (*pair, SceneObject(1, 2, 0, 0.5, 0.9))) is None  # something else on the canvas
    assert match_scene(caption, (pair[0], SceneObject(0, 0, 1, 0.2, 0.6))) is None  # a large one
    binding = parse_scene_caption("a red circle and a blue square")
    assert match_scene(binding, (SceneObject(1, 2, 1, 0.1, 0.1), SceneObject(0, 0, 0, 0.8, 0.8))) is not None
    assert match_scene(binding, (SceneObject(1, 0, 1, 0.1, 0.1), SceneObject(0, 2, 0, 0.8, 0.8))) is None  # swapped


def test_unknown_split_and_short_text_length_are_refused():
    with pytest.raises(ValueError, match="split: unknown 'hold'; allowed: train, val, test, heldout"):
        make().dataset("hold")
    with pytest.raises(ValueError, match="max_text_length: 8 would cut captions"):
        make(max_text_length=8)
    with pytest.raises(ValueError, match="heldout_size must be >= 1"):
        make(heldout_size=0)


def test_hard_negatives_are_the_captions_swapped_twins_false_of_the_image():
    data = make(hard_negatives=True)
    data.setup("fit")
    batch = next(iter(DataLoader(data.dataset("train"), batch_size=16)))
    check_batch(batch)
    assert batch["text_negatives"].shape == (16, len(TWINS), batch["text"].shape[1])
    kept_per_kind = {kind: 0 for kind in KINDS}
    for split in ("train", "heldout"):
        dataset = data.dataset(split)
        for index in range(48):
            scene, item = dataset.scene(index), dataset[index]
            twins = swapped_twins(scene.caption)
            for name, row, mask in zip(TWINS, item["text_negatives"], item["text_negatives_mask"]):
                if not mask.any():
                    assert not row.any(), name  # a missing twin is all padding
                    continue
                kept_per_kind[scene.caption.kind] += 1
                text = data.tokenizer.decode(row[None])[0]
                assert text == caption_text(twins[name], wording_of(scene)), name  # the caption's wording
                assert match_scene(parse_scene_caption(text), scene.objects) is None  # false of the image
                assert split == "heldout" or not parse_scene_caption(text).pairs & set(HELDOUT_PAIRS)
    assert kept_per_kind["single"] == kept_per_kind["counting"] == 0
    assert kept_per_kind["relation"] > 0 and kept_per_kind["binding"] > 0
    assert "text_negatives" not in make().dataset("train")[1]  # only when asked


def test_train_kinds_choose_the_train_splits_captions_only():
    data = make(train_kinds=["relation", "counting"])
    assert [data.dataset("train").scene(i).caption.kind for i in range(4)] == ["relation", "counting"] * 2
    assert [data.dataset("test").scene(i).caption.kind for i in range(4)] == list(KINDS)
    assert data.dataset("heldout").scene(2).caption.kind == "binding"
    with pytest.raises(ValueError, match="train_kinds: unknown 'pairs'; allowed: single, relation"):
        make(train_kinds=["pairs"])

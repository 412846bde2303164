"""ShapesDataModule: deterministic items that follow the batch contract and render every attribute
where it can be measured (captions parse back, pitch is the color, videos move the stated way)."""

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import ShapesDataModule
from mmgen_lightning.datamodules.shapes import (COLOR_RGB, COLORS, MOTIONS, NOTE_LENGTHS, NOTES_HZ, POSITION_XY,
                                                POSITIONS, SHAPES, SIZE_WORDS, TEMPLATES, POSITION_PHRASES, caption,
                                                parse_caption)

ALL = ["image", "text", "audio", "video", "label"]


def make(modalities=ALL, **kwargs):
    kwargs = {"train_size": 64, "val_size": 16, "test_size": 16, "image_size": 32, **kwargs}
    return ShapesDataModule(modalities=modalities, **kwargs)


@pytest.fixture(scope="module")
def shapes():
    return make()


@pytest.fixture(scope="module")
def items(shapes):
    dataset = shapes.dataset("train")
    return [dataset[i] for i in range(48)]


def test_same_seed_gives_identical_items_and_another_seed_differs(items):
    again = make().dataset("train")
    for index in range(4):
        for key, value in items[index].items():
            assert torch.equal(value, again[index][key]), key
    other = make(seed=1).dataset("train")
    assert not all(torch.equal(items[i]["image"], other[i]["image"]) for i in range(4))


def test_splits_draw_different_items(shapes):
    firsts = {split: torch.stack([shapes.dataset(split)[i]["attributes"] for i in range(16)]) for split in
              ("train", "val", "test")}
    assert not torch.equal(firsts["train"], firsts["val"])
    assert not torch.equal(firsts["val"], firsts["test"])
    assert not torch.equal(firsts["train"], firsts["test"])


def test_batches_follow_the_contract(shapes):
    batch = next(iter(DataLoader(shapes.dataset("val"), batch_size=8)))
    check_batch(batch)
    spec = shapes.data_spec
    size, frames, length = spec["image_size"], spec["num_frames"], spec["audio_length"]
    assert set(batch) == set(ALL) | {"text_mask", "attributes"}
    assert batch["image"].shape == (8, 3, size, size) and batch["image"].dtype == torch.float32
    assert batch["video"].shape == (8, frames, 3, size, size) and batch["video"].dtype == torch.float32
    assert batch["audio"].shape == (8, length) and batch["audio"].dtype == torch.float32
    assert batch["text"].shape == batch["text_mask"].shape == (8, shapes.max_text_length)
    assert batch["text_mask"].dtype == torch.bool and torch.equal(batch["text_mask"], batch["text"] != 0)
    assert batch["attributes"].shape == (8, 5) and batch["label"].shape == (8,)
    for key in ("image", "video", "audio"):
        assert batch[key].min() >= -1 and batch[key].max() <= 1, key
    assert batch["image"].min() == -1 and batch["image"].max() > 0  # black background, a bright shape
    assert torch.equal(batch["label"], batch["attributes"][:, 0])
    assert (batch["attributes"] < torch.tensor(spec["attribute_sizes"])).all()


def test_data_spec_names_every_size(shapes):
    spec = shapes.data_spec
    assert spec["dataset"] == "shapes" and spec["vocab_size"] == shapes.tokenizer.vocab_size > 40
    assert spec["num_classes"] == len(SHAPES) and spec["image_channels"] == 3
    assert spec["attribute_names"] == ["shape", "color", "size", "position", "motion"]
    assert spec["attribute_sizes"] == [len(SHAPES), 6, 2, 5, 4]
    assert spec["audio_length"] == 8000 and spec["sample_rate"] == 8000 and spec["num_frames"] == 8
    assert make(sample_rate=16000, audio_seconds=0.5).data_spec["audio_length"] == 8000


@pytest.mark.parametrize("modalities", [["image"], ["text", "label"], ["audio"], ["video", "image"]])
def test_items_carry_only_the_requested_modalities_and_the_same_scene(modalities, items):
    dataset = make(modalities).dataset("train")
    item = dataset[5]
    expected = set(modalities) | {"attributes"} | ({"text_mask"} if "text" in modalities else set())
    assert set(item) == expected
    for key in item:
        assert torch.equal(item[key], items[5][key]), key  # rendering one modality never shifts another


def test_image_is_frame_zero_of_the_video(items):
    for item in items[:8]:
        assert torch.equal(item["image"], item["video"][0])


def test_captions_state_the_attributes(shapes, items):
    texts = shapes.tokenizer.decode(torch.stack([item["text"] for item in items]))
    assert len(set(texts)) > 30  # varied wording
    for text, item in zip(texts, items):
        parsed = parse_caption(text)
        assert parsed is not None, text
        assert [parsed[k] for k in ("shape", "color", "size", "position", "motion")] == item["attributes"].tolist()


def test_parse_caption_reads_every_wording_of_every_scene():
    ranges = [range(n) for n in (len(SHAPES), len(COLORS), 2, len(POSITIONS), len(MOTIONS))]
    for attributes in itertools.product(*ranges):
        expected = dict(zip(("shape", "color", "size", "position", "motion"), attributes))
        for template in range(len(TEMPLATES)):
            for word, phrase in itertools.product(range(len(SIZE_WORDS[attributes[2]])),
                                                  range(len(POSITION_PHRASES[attributes[3]]))):
                assert parse_caption(caption(attributes, template, word, phrase)) == expected


def test_parse_caption_tells_position_from_motion_and_leaves_out_what_is_not_said():
    assert parse_caption("a small red circle on the left moving right") == {
        "shape": 0, "color": 0, "size": 0, "position": 1, "motion": 3}
    assert parse_caption("big blue square on the right , heading left") == {
        "shape": 1, "color": 2, "size": 1, "position": 2, "motion": 2}
    assert parse_caption("a red circle on the left moving up") == {"shape": 0, "color": 0, "position": 1, "motion": 0}
    assert parse_caption("a small red blue circle moving left") == {"shape": 0, "size": 0, "motion": 2}
    assert parse_caption("a thing moving sideways") is None and parse_caption("") is None


def test_image_shows_position_size_and_color(items):
    size = items[0]["image"].shape[-1]
    grid = (torch.arange(size) + 0.5) / size
    for item in items:
        shape, color, big, position, _ = item["attributes"].tolist()
        ink = (item["image"] + 1).sum(0)  # H,W
        centre = torch.stack([(ink.sum(0) * grid).sum(), (ink.sum(1) * grid).sum()]) / ink.sum()
        assert torch.allclose(centre, torch.tensor(POSITION_XY[position], dtype=torch.float32), atol=0.06)
        rgb = (item["image"] + 1).flatten(1).amax(1) / 2
        assert int((rgb[:, None] - torch.from_numpy(COLOR_RGB).T).abs().sum(0).argmin()) == color
    covered = {big: [] for big in (0, 1)}
    for item in items:
        covered[int(item["attributes"][2])].append(float((item["image"].amax(0) > 0).float().mean()))
    assert max(covered[0]) < min(covered[1])


def test_audio_pitch_is_the_color_and_length_is_the_size(items):
    for item in items:
        _, color, big, _, _ = item["attributes"].tolist()
        audio = item["audio"].numpy()
        peak = np.argmax(np.abs(np.fft.rfft(audio))) * 8000 / len(audio)
        assert int(np.argmin(np.abs(np.log(peak / np.array(NOTES_HZ))))) == color
        sounding = np.flatnonzero(audio)
        assert (sounding[-1] - sounding[0]) / len(audio) == pytest.approx(NOTE_LENGTHS[big], abs=0.01)
    peaks = {int(np.argmax(np.abs(np.fft.rfft(item["audio"].numpy())))) for item in items}
    assert len(peaks) >= 6


def test_video_moves_in_the_stated_direction(items):
    size = items[0]["video"].shape[-1]
    grid = torch.arange(size, dtype=torch.float32)
    for item in items:
        ink = (item["video"] + 1).sum(1)  # F,H,W
        x = (ink.sum(1) * grid).sum(1) / ink.sum((1, 2))
        y = (ink.sum(2) * grid).sum(1) / ink.sum((1, 2))
        dx, dy = float(x[-1] - x[0]), float(y[-1] - y[0])
        motion = MOTIONS[int(item["attributes"][4])]
        expected = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}[motion]
        assert dx * expected[0] + dy * expected[1] > 0.15 * size, (dx, dy, expected)
        assert abs(dx * expected[1]) + abs(dy * expected[0]) < 1.0


def test_workers_render_the_same_batches():
    datamodule = make(["image", "text", "audio"], batch_size=8)
    serial = next(iter(DataLoader(datamodule.dataset("val"), batch_size=8)))
    parallel = next(iter(DataLoader(datamodule.dataset("val"), batch_size=8, num_workers=2)))
    for key in serial:
        assert torch.equal(serial[key], parallel[key]), key


@pytest.mark.parametrize("kwargs, argument", [
    ({"modalities": ["image", "smell"]}, "modalities"),
    ({"image_size": 17}, "image_size"),
    ({"sample_rate": 44100}, "sample_rate"),
    ({"num_frames": 1}, "num_frames"),
    ({"audio_seconds": 0}, "audio_seconds"),
    ({"train_size": 0}, "train_size"),
    ({"val_size": -1}, "val_size"),
    ({"seed": -1}, "seed"),
    ({"max_text_length": 8}, "max_text_length"),
])
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make(**kwargs)

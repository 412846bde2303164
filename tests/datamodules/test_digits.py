"""DigitsDataModule: disjoint splits of the real scans, the batch contract, captions that parse back,
the keypad's two DTMF tones, and videos that move the way their captions say."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import DigitsDataModule
from mmgen_lightning.datamodules.digits import (DIRECTIONS, DTMF_FREQUENCIES, MOTION_PHRASES, TEMPLATES, caption,
                                                load_scans, parse_caption)

ALL = ["image", "text", "audio", "video", "label"]


@pytest.fixture(scope="module")
def digits():
    datamodule = DigitsDataModule(modalities=ALL, audio_seconds=0.5)
    datamodule.setup("validate")
    return datamodule


@pytest.fixture(scope="module")
def val(digits):
    return digits.dataset("val").tensors


def test_splits_are_disjoint_and_cover_every_scan(digits):
    parts = [set(digits.split_indices(split).tolist()) for split in ("train", "val", "test")]
    assert [len(p) for p in parts] == [1438, 179, 180]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set.union(*parts) == set(range(1797))
    other = DigitsDataModule(seed=1, split_fractions=(0.5, 0.25, 0.25))
    assert len(other.split_indices("train")) == 898 and set(other.split_indices("test").tolist()) != parts[2]


def test_same_seed_gives_identical_items_and_another_seed_differs(val):
    again = DigitsDataModule(modalities=ALL, audio_seconds=0.5).dataset("val").tensors
    for key, value in val.items():
        assert torch.equal(value, again[key]), key
    other = DigitsDataModule(modalities=ALL, audio_seconds=0.5, seed=1).dataset("val").tensors
    assert not torch.equal(val["image"], other["image"]) and not torch.equal(val["audio"], other["audio"])


def test_batches_follow_the_contract(digits):
    batch = next(iter(digits.val_dataloader()))
    check_batch(batch)
    spec = digits.data_spec
    count = digits.batch_size
    assert set(batch) == set(ALL) | {"text_mask", "attributes"}
    assert batch["image"].shape == (count, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["video"].shape == (count, 8, 1, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["audio"].shape == (count, spec["audio_length"]) == (count, 4000)
    assert batch["text"].shape == batch["text_mask"].shape == (count, digits.max_text_length)
    assert batch["text_mask"].dtype == torch.bool and torch.equal(batch["text_mask"], batch["text"] != 0)
    for key in ("image", "video", "audio"):
        assert batch[key].min() >= -1 and batch[key].max() <= 1, key
    assert torch.equal(batch["label"], batch["attributes"][:, 0])
    assert batch["attributes"].shape == (count, 2) and (batch["attributes"][:, 1] < 4).all()


def test_data_spec_names_every_size(digits):
    spec = digits.data_spec
    assert spec["dataset"] == "digits" and spec["vocab_size"] == digits.tokenizer.vocab_size > 30
    assert spec["num_classes"] == 10 and spec["image_channels"] == 1 and spec["video_size"] == 32
    assert spec["attribute_names"] == ["digit", "direction"] and spec["attribute_sizes"] == [10, 4]
    assert spec["sample_rate"] == 8000 and spec["num_frames"] == 8


def test_images_are_the_real_scans(digits, val):
    scans, targets = load_scans()
    indices = digits.split_indices("val")
    assert torch.equal(val["label"], torch.from_numpy(targets[indices]))
    # the 2x upsampled image, averaged back to 8x8, matches its own scan better than any other scan
    pooled = F.avg_pool2d(val["image"], 2).flatten(1)
    expected = (torch.from_numpy(scans[indices]) / 8 - 1).flatten(1)
    pooled, expected = pooled - pooled.mean(1, keepdim=True), expected - expected.mean(1, keepdim=True)
    correlation = F.normalize(pooled, dim=1) @ F.normalize(expected, dim=1).T
    assert correlation.diagonal().min() > 0.9
    assert torch.equal(correlation.argmax(1), torch.arange(len(indices)))
    assert DigitsDataModule(["image"], image_size=32, video_canvas=64).dataset("val")[0]["image"].shape == (1, 32, 32)


@pytest.mark.parametrize("modalities", [["image"], ["text", "label"], ["audio"], ["video"]])
def test_items_carry_only_the_requested_modalities(modalities, val):
    item = DigitsDataModule(modalities=modalities, audio_seconds=0.5).dataset("val")[3]
    assert set(item) == set(modalities) | {"attributes"} | ({"text_mask"} if "text" in modalities else set())
    assert torch.equal(item["attributes"], val["attributes"][3])  # the direction does not depend on modalities
    if "audio" in modalities:
        assert torch.equal(item["audio"], val["audio"][3])


def test_captions_state_the_digit_and_the_direction_only_with_video(digits, val):
    texts = digits.tokenizer.decode(val["text"])
    assert len(set(texts)) > 50
    for text, (digit, direction) in zip(texts, val["attributes"].tolist()):
        assert parse_caption(text) == {"digit": digit, "direction": direction}, text
    still = DigitsDataModule(["text"]).dataset("val").tensors
    for text, (digit, _) in zip(digits.tokenizer.decode(still["text"]), still["attributes"].tolist()):
        assert parse_caption(text) == {"digit": digit}, text


def test_parse_caption_reads_every_wording():
    for digit in range(10):
        for template in range(len(TEMPLATES)):
            for numeral in (False, True):
                assert parse_caption(caption(digit, None, template, numeral)) == {"digit": digit}
                for direction in range(len(DIRECTIONS)):
                    for phrase in range(len(MOTION_PHRASES)):
                        text = caption(digit, direction, template, numeral, phrase)
                        assert parse_caption(text) == {"digit": digit, "direction": direction}, text
    assert caption(8, 2, 5, False, 0) == "an eight moving left"
    assert caption(7, 0, 1, True, 1) == "the digit 7 going up"
    assert parse_caption("a handwritten cat") is None and parse_caption("a three and a 4") is None


def test_audio_is_the_keypad_tone_pair(val):
    sample_rate = 8000
    for audio, digit in zip(val["audio"][:60].numpy(), val["label"][:60].tolist()):
        spectrum = np.abs(np.fft.rfft(audio))
        hertz = np.fft.rfftfreq(len(audio), 1 / sample_rate)
        first = hertz[np.argmax(spectrum)]
        spectrum[np.abs(hertz - first) < 40] = 0  # the first peak's lobe
        second = hertz[np.argmax(spectrum)]
        low, high = sorted((first, second))
        expected = DTMF_FREQUENCIES[digit]
        assert abs(low - expected[0]) <= 10 and abs(high - expected[1]) <= 10, (digit, low, high)


def test_audio_varies_in_length_and_onset(val):
    loud = val["audio"].abs() > 0.2
    starts = loud.float().argmax(1)
    lengths = loud.sum(1)
    assert starts.float().std() > 100 and lengths.float().std() > 100


def test_video_moves_in_the_stated_direction(val):
    canvas = val["video"].shape[-1]
    grid = torch.arange(canvas, dtype=torch.float32)
    ink = (val["video"][:40, :, 0] + 1)  # N,F,H,W
    x = (ink.sum(2) * grid).sum(-1) / ink.sum((2, 3))
    y = (ink.sum(3) * grid).sum(-1) / ink.sum((2, 3))
    for dx, dy, direction in zip(x[:, -1] - x[:, 0], y[:, -1] - y[:, 0], val["attributes"][:40, 1].tolist()):
        along = {"up": -dy, "down": dy, "left": -dx, "right": dx}[DIRECTIONS[direction]]
        across = dx if DIRECTIONS[direction] in ("up", "down") else dy
        assert along > 12 and abs(across) < 0.5, (DIRECTIONS[direction], float(dx), float(dy))
    # frame 0 of a rightward video is the image at the canvas's left edge
    right = int(np.flatnonzero(val["attributes"][:, 1].numpy() == 3)[0])
    frame, image = val["video"][right, 0], val["image"][right]
    assert any(torch.equal(frame[:, row:row + 16, :16], image) for row in range(canvas - 16 + 1))


def test_workers_give_the_same_batches():
    datamodule = DigitsDataModule(["image", "label"], batch_size=32, num_workers=2)
    datamodule.setup("validate")
    serial = next(iter(DataLoader(datamodule.dataset("val"), batch_size=32)))
    parallel = next(iter(datamodule.val_dataloader()))
    for key in serial:
        assert torch.equal(serial[key], parallel[key]), key


@pytest.mark.parametrize("kwargs, argument", [
    ({"modalities": ["image", "smell"]}, "modalities"),
    ({"image_size": 17}, "image_size"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions"),
    ({"split_fractions": (0.9, 0.1)}, "split_fractions"),
    ({"split_fractions": (1.0, 0.0, 0.0)}, "split_fractions"),
    ({"sample_rate": 22050}, "sample_rate"),
    ({"audio_seconds": -1.0}, "audio_seconds"),
    ({"num_frames": 0}, "num_frames"),
    ({"video_canvas": 16}, "video_canvas"),
    ({"image_size": 32, "video_canvas": 32}, "video_canvas"),
    ({"seed": -3}, "seed"),
])
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DigitsDataModule(**kwargs)


def test_a_split_too_small_to_hold_an_image_is_an_error():
    with pytest.raises(ValueError, match="split_fractions"):
        DigitsDataModule(split_fractions=(0.9996, 0.0002, 0.0002)).dataset("train")

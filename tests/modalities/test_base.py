"""What every modality is: checks, sizes, what models read of it, its tensors in another model's terms
(mmgen_lightning/modalities/base.py and the modality files)."""

from __future__ import annotations

import pytest
import torch

from mmgen_lightning.modalities import DataSpec, get_modality
from tests.modalities import SPEC


def test_checks_name_the_key_and_what_is_wrong():
    get_modality("image").check(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"conditions\['image'\] must have 4 dims"):
        get_modality("image").check(torch.zeros(2, 4, 4), "conditions")
    with pytest.raises(TypeError, match=r"batch\['text'\] must be torch.long"):
        get_modality("text").check(torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"batch\['audio'\] must be floating point"):
        get_modality("audio").check(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"batch\['label'\] must be a Tensor, got list"):
        get_modality("label").check([1, 2])


def test_video_size_defaults_to_the_image_size():
    video = get_modality("video")
    assert video.size(SPEC) == 16 and video.size({**SPEC, "video_size": 32}) == 32


def test_only_audio_has_a_condition_frontend_and_its_inputs_keep_the_clip():
    spec = DataSpec.from_dict(SPEC)
    batch = {"label": torch.tensor([0, 2]), "text": torch.randint(0, 12, (2, 6)),
             "text_mask": torch.ones(2, 6, dtype=torch.bool), "audio": torch.randn(2, 4000).clamp(-1, 1)}
    for name in ("label", "text"):
        assert get_modality(name).condition_frontend(spec, n_mels=16) is None
        assert get_modality(name).condition_inputs(batch).keys() == set(get_modality(name).keys())
    audio = get_modality("audio")
    frontend = audio.condition_frontend(spec, n_mels=16, frames=8)
    inputs = audio.condition_inputs(batch, frontend)
    assert sorted(inputs) == ["audio", "log_mel"]  # the clip stays for other readers (an aligner)
    assert torch.equal(inputs["log_mel"], audio.log_mel(spec, 16, 8)(batch["audio"]))
    with pytest.raises(ValueError, match="read through their log-mel frontend"):
        audio.condition_inputs(batch)
    with pytest.raises(TypeError, match="n_mel"):  # a misspelt option is not dropped
        audio.condition_frontend(spec, n_mel=16)


def test_conform_resizes_frames_and_retokenises_captions():
    from mmgen_lightning.tokenizer import CaptionTokenizer

    images = torch.rand(2, 1, 32, 32) * 2 - 1
    small = get_modality("image").conform({"image": images}, SPEC)["image"]
    expected = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True)
    assert small.shape == (2, 1, 16, 16) and torch.allclose(small, expected)
    plain = get_modality("image").conform({"image": images}, SPEC, antialias=False)["image"]
    assert not torch.allclose(plain, expected)  # a GAN's aligner term keeps its plain bilinear resize
    clips = get_modality("video").conform({"video": torch.rand(2, 4, 1, 8, 8)}, {**SPEC, "video_size": 12})["video"]
    assert clips.shape == (2, 4, 1, 12, 12)
    same = torch.rand(2, 1, 16, 16)
    assert get_modality("image").conform({"image": same}, SPEC)["image"] is same  # nothing to do
    ours = CaptionTokenizer.train(["a red circle", "a blue square"], max_length=6)
    theirs = CaptionTokenizer.train(["square blue a", "circle red a", "green"], max_length=8)
    text = ours.encode(["a blue square"])
    moved = get_modality("text").conform(text, SPEC, ours, theirs)
    assert moved["text"].shape == (1, 8) and theirs.decode(moved["text"]) == ["a blue square"]
    assert not torch.equal(moved["text"][0, :6], text["text"][0])  # other ids for the same words
    assert get_modality("text").conform(text, SPEC)["text"] is text["text"]  # no tokenizers: as they are
    assert get_modality("label").conform({"label": torch.tensor([1])}, SPEC)["label"].dtype == torch.long


def test_to_data_gives_one_plain_value_per_sample():
    from mmgen_lightning.tokenizer import CaptionTokenizer

    images = get_modality("image").to_data(torch.full((2, 3, 4, 4), 1.0))
    assert len(images) == 2 and images[0].shape == (4, 4, 3) and images[0].dtype.name == "uint8"
    assert (images[0] == 255).all()
    clips = get_modality("video").to_data(torch.full((1, 2, 1, 4, 4), -1.0))
    assert len(clips[0]) == 2 and clips[0][0].shape == (4, 4) and (clips[0][0] == 0).all()
    assert get_modality("audio").to_data(torch.full((1, 5), 2.0))[0].tolist() == [1.0] * 5  # clamped
    assert get_modality("label").to_data(torch.tensor([2, 0])) == [2, 0]
    tokenizer = CaptionTokenizer.train(["a red circle"], max_length=6)
    assert get_modality("text").to_data(tokenizer.encode(["a red circle"])["text"], tokenizer=tokenizer) == \
        ["a red circle"]
    with pytest.raises(ValueError, match="needs the tokenizer"):
        get_modality("text").to_data(torch.zeros(1, 6, dtype=torch.long))

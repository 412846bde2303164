"""Drawing samples: TensorBoard and pictures (mmgen_lightning/modalities/tensorboard.py and the modality
files)."""

from __future__ import annotations

import pytest
import torch

from mmgen_lightning.modalities import DataSpec, get_modality
from tests.modalities import SPEC


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter: records what each call was given."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        return lambda tag, value, step, **kwargs: self.calls.append((method, tag, value, kwargs))


def test_each_modality_draws_itself_in_tensorboard():
    from mmgen_lightning.tokenizer import CaptionTokenizer

    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square"], max_length=6)
    writer = RecordingWriter()
    get_modality("image").log(writer, "i", torch.zeros(3, 1, 16, 16), 0)
    get_modality("video").log(writer, "v", torch.zeros(2, 4, 1, 16, 16), 0)
    get_modality("audio").log(writer, "a", torch.zeros(6, 100), 0, spec={"sample_rate": 8000})
    captions = tokenizer.encode(["a red circle", "a blue square"])
    get_modality("text").log(writer, "t", captions["text"], 0, tokenizer=tokenizer, conditions=captions)
    get_modality("label").log(writer, "l", torch.tensor([1, 2]), 0)
    methods = [(method, tag) for method, tag, _, _ in writer.calls]
    assert methods[:2] == [("add_image", "i"), ("add_image", "v")]
    assert methods[2:6] == [("add_audio", f"a/{i}") for i in range(4)]  # the first four clips
    assert writer.calls[2][3]["sample_rate"] == 8000
    assert writer.calls[1][2].shape[-2:] == (2 * 18 + 2, 4 * 18 + 2)  # a row of frames per clip
    assert "| 0 | a red circle | a red circle |" in writer.calls[6][2]
    assert writer.calls[7][2] == "1, 2"


def test_pictures_are_frames_of_three_channels_in_the_unit_range():
    spec = DataSpec.from_dict(SPEC)
    image = get_modality("image").pictures(torch.rand(2, 1, 16, 16) * 2 - 1, 32)
    video = get_modality("video").pictures(torch.rand(2, 4, 1, 16, 16) * 2 - 1, 32)
    audio = get_modality("audio").pictures(torch.randn(2, 4000) * 0.1, 32,
                                           log_mel=get_modality("audio").log_mel(spec, 16, 8))
    assert image.shape == (2, 1, 3, 32, 32) and video.shape == (2, 4, 3, 32, 32) and audio.shape == (2, 1, 3, 32, 32)
    for pictures in (image, video, audio):
        assert pictures.min() >= 0 and pictures.max() <= 1


def test_what_has_no_picture_or_no_frontend_says_so():
    with pytest.raises(NotImplementedError, match="label: not drawn as pictures"):
        get_modality("label").pictures(torch.tensor([1]), 32)
    with pytest.raises(ValueError, match="audio pictures need the log_mel frontend"):
        get_modality("audio").pictures(torch.zeros(1, 4000), 32)

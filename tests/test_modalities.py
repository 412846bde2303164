"""The modality objects and the typed data spec (mmgen_lightning/modalities.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgen_lightning.modalities import (JUDGEABLE, MODALITIES, DataSpec, get_modality, random_shift,
                                        scored_dimensions)

SPEC = {"dataset": "toy", "modalities": ["image", "text", "audio", "video", "label"], "vocab_size": 12,
        "max_text_length": 6, "image_size": 16, "image_channels": 1, "num_frames": 4, "sample_rate": 8000,
        "audio_length": 4000, "num_classes": 3, "attribute_names": ["digit"], "attribute_sizes": [10]}


def test_registry_has_one_object_per_batch_key_and_names_the_allowed_ones():
    assert MODALITIES == ("image", "text", "audio", "video", "label")
    assert JUDGEABLE == ("image", "audio", "video")
    assert all(get_modality(name).name == name for name in MODALITIES)
    with pytest.raises(ValueError, match="unknown modality 'smell'; allowed: image, text, audio, video, label"):
        get_modality("smell")


def test_data_spec_is_typed_and_reads_like_the_dict_it_came_from():
    spec = DataSpec.from_dict({**SPEC, "custom": 7})
    assert spec.image_size == 16 and spec.extra == {"custom": 7}
    assert spec.to_dict() == {**SPEC, "custom": 7} and spec == {**SPEC, "custom": 7}
    assert "video_size" not in spec and spec.get("video_size", 32) == 32  # unset fields read as absent
    with pytest.raises(KeyError):
        spec["video_size"]
    assert type(spec.to_dict()) is dict and DataSpec.from_dict(spec) is spec
    given_none = DataSpec.from_dict({"num_classes": None, "image_size": 16})
    assert given_none.num_classes is None and given_none == {"num_classes": None, "image_size": 16}
    assert "num_classes" in given_none and given_none["num_classes"] is None
    assert {**spec, "image_size": 32}["image_size"] == 32 and (spec | {"image_size": 32})["image_size"] == 32


def test_checks_name_the_key_and_what_is_wrong():
    get_modality("image").check(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"conditions\['image'\] must have 4 dims"):
        get_modality("image").check(torch.zeros(2, 4, 4), "conditions")
    with pytest.raises(TypeError, match=r"batch\['text'\] must be torch.long"):
        get_modality("text").check(torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"batch\['audio'\] must be floating point"):
        get_modality("audio").check(torch.zeros(2, 4, dtype=torch.long))


def test_scored_dimensions_count_pixels_real_tokens_labels_and_spectrogram_bins():
    batch = {"image": torch.zeros(2, 1, 4, 4), "text": torch.zeros(2, 5, dtype=torch.long),
             "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
             "label": torch.zeros(2, dtype=torch.long), "audio": torch.zeros(2, 100)}
    assert scored_dimensions(batch, ["image", "text", "label"]).tolist() == [16 + 2 + 1, 16 + 4 + 1]
    assert scored_dimensions(batch, ["audio"]).tolist() == [100, 100]
    assert scored_dimensions(batch, ["audio"], spectrogram_dims=64 * 33).tolist() == [2112, 2112]
    assert scored_dimensions(batch, ["image"]).dtype == torch.float64


def test_video_size_defaults_to_the_image_size():
    video = get_modality("video")
    assert video.size(SPEC) == 16 and video.size({**SPEC, "video_size": 32}) == 32


def test_default_networks_are_sized_from_the_spec():
    spec = DataSpec.from_dict(SPEC)
    batch = {"image": torch.zeros(2, 1, 16, 16), "text": torch.ones(2, 6, dtype=torch.long),
             "video": torch.zeros(2, 4, 1, 16, 16), "label": torch.zeros(2, dtype=torch.long)}
    for name, value in batch.items():
        inputs = (value, value != 0) if name == "text" else (value,)  # the text encoder reads the mask too
        assert get_modality(name).encoder(spec, 10, 16)(*inputs).shape == (2, 10), name
    assert get_modality("image").decoder(spec, 10, 16)(torch.zeros(2, 10)).shape == (2, 1, 16, 16)
    assert get_modality("video").decoder(spec, 10, 16)(torch.zeros(2, 10)).shape == (2, 4, 1, 16, 16)
    assert get_modality("label").decoder(spec, 10, 16)(torch.zeros(2, 10)).shape == (2, 3)
    log_mel = get_modality("audio").log_mel(spec, n_mels=16, frames=8)
    mel = log_mel(torch.zeros(2, 4000))
    assert mel.shape == (2, 16, log_mel.frames)
    assert get_modality("audio").encoder(spec, 10, 16, n_mels=16)(mel).shape == (2, 10)
    assert get_modality("audio").decoder(spec, 10, 16, n_mels=16, frames=8)(torch.zeros(2, 10)).shape == mel.shape


def test_random_shift_moves_each_sample_by_its_own_offset_and_fills_with_background():
    images = torch.zeros(64, 1, 5, 5)
    images[:, :, 2, 2] = 1.0  # one bright pixel in the middle
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 5, where % 5
    assert ((rows - 2).abs() <= 1).all() and ((cols - 2).abs() <= 1).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 4  # offsets differ between samples
    assert torch.equal(random_shift(images, 0), images)
    # a video's frames move together; the global RNG draws the same offsets as an explicit generator
    video = torch.randn(8, 3, 1, 6, 6)
    torch.manual_seed(3)
    moved = random_shift(video, 2)
    assert torch.equal(moved, random_shift(video, 2, torch.Generator().manual_seed(3)))
    padded = torch.nn.functional.pad(video, (2,) * 4, value=-1.0)
    for i in range(8):
        assert any(torch.equal(moved[i], padded[i, :, :, dy:dy + 6, dx:dx + 6]) for dy in range(5) for dx in range(5))


def test_random_shift_on_the_global_rng_keeps_one_bright_pixel_within_bounds():
    torch.manual_seed(0)
    images = torch.full((64, 1, 8, 8), -1.0)
    images[:, :, 3, 4] = 1.0  # one bright pixel per image
    shifted = random_shift(images, 2)
    positions = (shifted[:, 0] == 1.0).flatten(1).float().argmax(1)
    rows, cols = positions // 8, positions % 8
    assert ((shifted == 1.0).flatten(1).sum(1) == 1).all() and (shifted[shifted != 1.0] == -1.0).all()
    assert ((rows - 3).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets differ between images
    assert torch.equal(random_shift(images, 0), images)


def test_files_written_by_a_modality_read_back(tmp_path):
    image, video = get_modality("image"), get_modality("video")
    picture = torch.rand(3, 16, 16) * 2 - 1
    image.write(picture, tmp_path / "a.png")
    spec3 = {**SPEC, "image_channels": 3}
    assert (image.read(tmp_path / "a.png", spec3) - picture).abs().max() <= 1 / 127.5
    audio = 0.5 * torch.sin(torch.linspace(0, 200, 4000))
    get_modality("audio").write(audio, tmp_path / "a.wav", SPEC)
    assert (get_modality("audio").read(tmp_path / "a.wav", SPEC) - audio).abs().max() < 1e-3
    assert get_modality("audio").read(tmp_path / "a.wav", {**SPEC, "audio_length": 100}).shape == (100,)  # cut
    padded = get_modality("audio").read(tmp_path / "a.wav", {**SPEC, "audio_length": 5000})  # zero-padded
    assert padded.shape == (5000,) and (padded[4000:] == 0).all()
    with pytest.raises(ValueError, match="sample rate is 8000 Hz, expected 16000 Hz"):
        get_modality("audio").read(tmp_path / "a.wav", {**SPEC, "sample_rate": 16000}, resample=False)
    assert get_modality("audio").fit_length(torch.ones(2, 3), 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    clip = torch.rand(4, 1, 16, 16) * 2 - 1
    video.write(clip, tmp_path / "v.gif")
    assert (video.read(tmp_path / "v.gif", SPEC) - clip).abs().max() <= 1 / 127.5  # GIF frames read back
    assert get_modality("label").write(torch.tensor(2), tmp_path / "l.txt") == {"label": 2}
    assert (tmp_path / "l.txt").read_text() == "2\n"
    with pytest.raises(ValueError, match="^cannot decode the image"):  # the caller names where (option, line)
        image.read(tmp_path / "a.wav", SPEC)
    with pytest.raises(ValueError, match="label is not read from files"):
        get_modality("label").read(tmp_path / "l.txt", SPEC)
    # read as training reads a manifest: NaN audio and a wide image are treated alike on every path
    import soundfile
    soundfile.write(str(tmp_path / "nan.wav"), np.full(100, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match="^the audio holds NaN or Inf"):
        get_modality("audio").read(tmp_path / "nan.wav", SPEC)
    wide = torch.full((3, 16, 48), -1.0)
    wide[:, :, 16:32] = 1.0  # the centre square is white, the sides black
    image.write(wide, tmp_path / "wide.png")
    assert (image.read(tmp_path / "wide.png", SPEC) == 1.0).all()  # centre-cropped, not squashed
    with pytest.raises(ValueError, match="sample_rate is required"):
        get_modality("audio").write(audio, tmp_path / "b.wav")


def test_write_samples_names_files_by_the_modality_and_decodes_captions(tmp_path):
    from mmgen_lightning.service import write_samples
    from mmgen_lightning.tokenizer import CaptionTokenizer

    tokenizer = CaptionTokenizer.train(["a red circle", "a blue square"], max_length=6)
    captions = tokenizer.encode(["a red circle", "a blue square"])
    rows = write_samples(captions, "text", tmp_path, [{"label": 0}, {"label": 1}], 3, SPEC, tokenizer)
    assert rows == [{"file": "00000_text.txt", "to": "text", "condition": {"label": 0}, "seed": 3,
                     "text": "a red circle"},
                    {"file": "00001_text.txt", "to": "text", "condition": {"label": 1}, "seed": 3,
                     "text": "a blue square"}]
    assert (tmp_path / "00001_text.txt").read_text() == "a blue square\n"
    rows = write_samples({"audio": torch.zeros(2, 4000)}, "audio", tmp_path, [{}, {}], None, SPEC, start_index=2)
    assert [row["file"] for row in rows] == ["00002_audio.wav", "00003_audio.wav"]
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 4  # appended
    with pytest.raises(ValueError, match="sample_rate is required"):
        write_samples({"audio": torch.zeros(1, 10)}, "audio", tmp_path, [{}], None)


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


def test_condition_embedders_read_what_condition_inputs_give():
    spec = DataSpec.from_dict(SPEC)
    batch = {"label": torch.tensor([0, 2]), "text": torch.randint(0, 12, (2, 6)),
             "text_mask": torch.ones(2, 6, dtype=torch.bool), "audio": torch.randn(2, 4000).clamp(-1, 1)}
    for name in ("label", "text", "audio"):
        modality = get_modality(name)
        frontend = modality.condition_frontend(spec, n_mels=16)
        assert (frontend is None) == (name != "audio")
        inputs = modality.condition_inputs(batch, frontend)
        embedder = modality.condition_embedder(spec, 8, n_mels=16, text_width=16, audio_width=8)
        assert embedder(inputs).shape == (2, 8)
    audio_inputs = get_modality("audio").condition_inputs(batch, get_modality("audio").log_mel(spec, 16))
    assert sorted(audio_inputs) == ["audio", "log_mel"]  # the clip stays for other readers (an aligner)
    with pytest.raises(NotImplementedError, match="image: no condition embedder"):
        get_modality("image").condition_embedder(spec, 8)


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


def test_manifest_cells_and_shard_storage_belong_to_the_modality():
    from mmgen_lightning.tokenizer import CaptionTokenizer

    assert get_modality("label").parse_cell(" 3") == 3
    for bad in ("-1", "2.5", "two", None):
        with pytest.raises(ValueError, match="label must be an integer >= 0"):
            get_modality("label").parse_cell(bad)
    with pytest.raises(ValueError, match="the caption is empty"):
        get_modality("text").parse_cell("  ")
    with pytest.raises(ValueError, match="image is read from files"):
        get_modality("image").parse_cell("a.png")
    assert get_modality("text").missing_from_manifest() == "no captions (no 'text' or 'caption' column)"
    tokenizer = CaptionTokenizer.train(["a red circle"], max_length=6)
    item = {"image": torch.rand(3, 4, 4).mul(255).round() / 127.5 - 1, "video": torch.full((2, 1, 4, 4), -1.0),
            "audio": torch.rand(10) - 0.5, "label": torch.tensor(2), **tokenizer.encode("a red circle")}
    item["text"], item["text_mask"] = item["text"][0], item["text_mask"][0]
    row = {"text": "a red circle"}
    for name in MODALITIES:
        stored = get_modality(name).to_shard(item, row)
        assert (getattr(stored, "dtype", None) == torch.uint8) == get_modality(name).pixels
        back = get_modality(name).from_shard(stored, tokenizer)
        assert sorted(back) == sorted(get_modality(name).keys())
        for key, value in back.items():  # exactly the item again: 8-bit pixels are lossless in uint8
            assert torch.equal(value, item[key]), key

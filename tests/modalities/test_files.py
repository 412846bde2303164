"""Reading, writing, manifest cells and shard storage (mmgen_lightning/modalities/files.py and the
modality files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgen_lightning.modalities import MODALITIES, get_modality
from tests.modalities import SPEC


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


def test_a_misspelt_read_option_is_a_type_error(tmp_path):
    get_modality("image").write(torch.zeros(1, 4, 4), tmp_path / "a.png")
    with pytest.raises(TypeError, match="resampel"):
        get_modality("image").read(tmp_path / "a.png", SPEC, resampel=False)


def test_video_read_refuses_containers_it_cannot_decode_and_empty_folders(tmp_path):
    with pytest.raises(ValueError, match=r"\.mp4 needs a video decoder"):
        get_modality("video").read(tmp_path / "clip.mp4", SPEC)
    (tmp_path / "frames").mkdir()
    with pytest.raises(ValueError, match="the frame folder is empty"):
        get_modality("video").read(tmp_path / "frames", SPEC)
    for index, value in enumerate((-1.0, 1.0)):  # two frames, read in name order and repeated to num_frames
        get_modality("image").write(torch.full((1, 8, 8), value), tmp_path / "frames" / f"{index}.png")
    clip = get_modality("video").read(tmp_path / "frames", SPEC)
    assert clip.shape == (4, 1, 16, 16) and clip[:, 0, 0, 0].tolist() == [-1.0, -1.0, 1.0, 1.0]

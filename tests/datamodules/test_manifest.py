"""ManifestDataModule: real PNG/WAV/GIF files train every family; batches hold what the files hold;
each kind of bad row gives a clear error naming its line and file, or is dropped and counted exactly."""

import json
import re
import shutil

import lightning as L
import numpy as np
import pytest
import soundfile
import torch

from mmgen_lightning.batch import check_batch
from mmgen_lightning.callbacks.faults import DataErrorReport
from mmgen_lightning.datamodules.manifest import DataError, ManifestDataModule
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import fit
from tests.datamodules.manifest_corpus import COLORS, DATA_OPTIONS, RGB, write_corpus


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), 16)


def datamodule(manifest, **options):
    return ManifestDataModule(str(manifest), **{"batch_size": 4, **DATA_OPTIONS, **options})



FAMILIES = {
    "vae_every_modality": (None, lambda s: MultimodalVAE(
        s, network={"latent_dim": 4, "width": 16, "text_width": 16, "n_mels": 16})),
    "gan_text_to_image": (["image", "text"], lambda s: ConditionalGAN(
        s, condition="text", network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16})),
    "gan_audio_to_video": (["video", "audio"], lambda s: ConditionalGAN(
        s, condition="audio", output="video", network={"width": 8, "latent_dim": 8, "condition_dim": 8, "n_mels": 16})),
    "captioner_image": (["image", "text"], lambda s: Captioner(
        s, network={"width": 16, "encoder_layers": 1, "decoder_layers": 1})),
    "captioner_audio": (["audio", "text"], lambda s: Captioner(
        s, network={"width": 16, "encoder_layers": 1, "decoder_layers": 1, "n_mels": 16, "audio_frames": 8})),
    "captioner_video": (["video", "text"], lambda s: Captioner(
        s, network={"width": 16, "encoder_layers": 1, "decoder_layers": 1})),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_real_files_train_one_step_for_every_family(corpus, family):
    modalities, build = FAMILIES[family]
    dm = datamodule(corpus, modalities=modalities)
    torch.manual_seed(0)
    model = build(dm.data_spec)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, dm, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)
    changed = sum(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert changed > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_batches_hold_what_the_files_hold(corpus):
    dm = datamodule(corpus, split_fractions=(1.0, 0.0, 0.0))
    assert dm.modalities == ["image", "text", "audio", "video", "label"]  # inferred from the first row
    dataset = dm.dataset("train")
    for index in range(4):
        item = dataset[index]
        row = dataset.rows[index]
        label = row["label"]
        check_batch({k: v[None] for k, v in item.items()}, where="item")
        assert int(item["label"]) == label and dm.tokenizer.decode(item["text"][None]) == [f"a {COLORS[label]} square"]
        # the square's colour at its centre, in [-1, 1]; the background is black (-1)
        centre = item["image"][:, 7, 4]
        torch.testing.assert_close(centre, torch.tensor(RGB[label]) / 127.5 - 1, atol=0.02, rtol=0)
        assert item["image"][:, 0, 0].eq(-1).all()
        assert item["video"].shape == (4, 3, 16, 16)
        assert not torch.equal(item["video"][0], item["video"][-1])  # the square moves
        # a 0.3 s tone at 8 kHz or 11.025 kHz becomes 2000 samples at 8 kHz: cut, not padded
        audio = item["audio"]
        assert audio.shape == (2000,) and audio.abs().max() > 0.45
        spectrum = torch.fft.rfft(audio).abs()
        assert abs(int(spectrum.argmax()) * 8000 / 2000 - (label + 1) * 400) <= 8


def test_split_is_seeded_disjoint_or_taken_from_the_split_column(corpus, tmp_path):
    first, again = datamodule(corpus, seed=3), datamodule(corpus, seed=3)
    lines = {s: [r["line"] for r in first.rows[s]] for s in ("train", "val", "test")}
    assert lines == {s: [r["line"] for r in again.rows[s]] for s in lines}
    assert sorted(sum(lines.values(), [])) == list(range(1, 17))
    assert [len(v) for v in lines.values()] == [13, 1, 2]  # 16 rows cut at round(0.8 * 16), round(0.9 * 16)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    for index, row in enumerate(rows):
        row["split"] = "val" if index < 3 else "train"
    (tmp_path / "files").symlink_to(corpus.parent / "files")
    (tmp_path / "split.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_column = datamodule(tmp_path / "split.jsonl")
    assert [r["line"] for r in by_column.rows["val"]] == [1, 2, 3] and not by_column.rows["test"]


def test_csv_manifest_bpe_tokenizer_and_tokenizer_from_file(corpus, tmp_path):
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    csv = tmp_path / "manifest.csv"
    csv.write_text("image,caption,label\n" + "".join(f"{corpus.parent / r['image']},{r['caption']},{r['label']}\n"
                                                    for r in rows))
    dm = datamodule(csv, tokenizer_kind="bpe", vocab_size=40, split_fractions=(1.0, 0.0, 0.0))
    assert dm.modalities == ["image", "text", "label"]
    first = dm.rows["train"][0]["line"] - 2  # CSV line 2 is rows[0]
    assert dm.tokenizer.decode(dm.dataset("train")[0]["text"][None]) == [rows[first]["caption"]]
    dm.tokenizer.save(tmp_path / "tokenizer.json")
    loaded = datamodule(csv, tokenizer_path=str(tmp_path / "tokenizer.json"))
    assert loaded.tokenizer.to_json() == dm.tokenizer.to_json()
    (tmp_path / "empty.csv").write_text(f"image,caption\n{corpus.parent / 'files' / '0.png'},\n")
    with pytest.raises(DataError, match=r"empty.csv line 2: the caption is empty"):
        datamodule(tmp_path / "empty.csv")
    (tmp_path / "bad.csv").write_text("image,caption,colour\nx.png,a cat,red\n")
    with pytest.raises(DataError, match=r"bad.csv line 2: unknown column 'colour'"):
        datamodule(tmp_path / "bad.csv")


def test_videos_from_frame_folders_and_mp4_refused(corpus, tmp_path):
    frames = tmp_path / "clip"
    frames.mkdir()
    for index in range(6):
        shutil.copy(corpus.parent / "files" / f"{(index % 4) * 4}.png", frames / f"{index:03d}.png")
    spec = {"image_size": 16, "image_channels": 3, "num_frames": 3}
    video = get_modality("video").read(frames, spec)  # frames 0, 2 (rounded from 2.5), 5: all red squares
    assert video.shape == (3, 3, 16, 16) and video[:, 0, 7, 4].gt(0.7).all()
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    with pytest.raises(ValueError, match=r"\.mp4 needs a video decoder .*GIF or a folder of frame images"):
        get_modality("video").read(tmp_path / "clip.mp4", spec)


# --- bad data ---------------------------------------------------------------------------------------------
def write_bad_files(folder):
    """One file per kind of damage; returns ``{kind: (row, where the error shows, reason pattern)}``."""
    files = folder / "files"
    (files / "empty.png").write_bytes(b"")
    (files / "notes.wav").write_text("this is a text file, not audio\n")
    soundfile.write(files / "nan.wav", np.full(800, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    (files / "cut.png").write_bytes((files / "0.png").read_bytes()[:60])
    good = {"image": "files/0.png", "audio": "files/0.wav", "caption": "a red square", "label": 0}
    return {
        "missing_file": ({**good, "image": "files/nope.png"}, "read", r"image file not found"),
        "zero_byte_png": ({**good, "image": "files/empty.png"}, "read", r"image file is empty \(0 bytes\)"),
        "empty_caption": ({**good, "caption": "  "}, "read", r"the caption is empty"),
        "unknown_column": ({**good, "colour": "red"}, "read", r"unknown column 'colour'"),
        "text_renamed_wav": ({**good, "audio": "files/notes.wav"}, "decode", r"cannot decode the audio"),
        "nan_audio": ({**good, "audio": "files/nan.wav"}, "decode", r"the audio holds NaN or Inf samples"),
        "truncated_png": ({**good, "image": "files/cut.png"}, "decode", r"cannot decode the image"),
    }


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    write_corpus(folder, 12)
    return folder, write_bad_files(folder)


def manifest_with(folder, rows, name):
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps({**row, "split": "train"}) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("kind", ["missing_file", "zero_byte_png", "empty_caption", "unknown_column",
                                  "text_renamed_wav", "nan_audio", "truncated_png"])
def test_each_bad_row_raises_naming_its_line_and_file(bad_corpus, kind):
    folder, bad = bad_corpus
    good = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()][:3]
    good = [{k: v for k, v in row.items() if k != "video"} for row in good]
    row, when, reason = bad[kind]
    manifest = manifest_with(folder, good + [row], kind)
    file = {"png": row["image"], "wav": row["audio"], "audio": row["audio"]}.get(kind.split("_")[-1])
    file = row["image"] if kind == "missing_file" else file
    where = rf"{kind}.jsonl line 4" + (rf" \(.*{file}\)" if file else "")
    with pytest.raises(DataError, match=rf"{where}: {reason}"):
        dm = datamodule(manifest)
        assert when == "decode"  # read-time damage must not get this far
        for index in range(len(dm.dataset("train"))):
            dm.dataset("train")[index]


def test_wrong_sample_rate_is_an_error_when_resampling_is_off(bad_corpus):
    folder, _ = bad_corpus
    dm = datamodule(folder / "manifest.jsonl", modalities=["audio"], resample=False, split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"\(.*files/1.wav\): sample rate is 11025 Hz, expected 8000 Hz"):
        [dm.dataset("train")[i] for i in range(len(dm.dataset("train")))]


def test_skip_drops_counts_and_reports_every_bad_row_exactly(bad_corpus):
    folder, bad = bad_corpus
    good = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    good = [{k: v for k, v in row.items() if k != "video"} for row in good]
    manifest = manifest_with(folder, good + [row for row, _, _ in bad.values()], "all_bad")
    dm = datamodule(manifest, on_error="skip", modalities=["image", "text", "audio"], batch_size=5)
    assert len(dm.rows["train"]) == 12 + 3  # the 4 read-time failures are gone already
    report = DataErrorReport()
    torch.manual_seed(0)
    model = MultimodalVAE(dm.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", max_epochs=2, limit_val_batches=0,
                        callbacks=[report])
    messages = []
    original = dm.take_skip_report
    dm.take_skip_report = lambda split: messages.append(original(split)) or messages[-1]
    trainer.fit(model, datamodule=dm)
    # 15 rows in 3 batches of 5: every decode failure is met once per epoch; read failures are reported once
    assert report.history == [("train", 0, 7), ("train", 1, 3)]
    first = "\n".join(messages[0][1])
    for kind, (row, _, reason) in bad.items():
        assert len(re.findall(reason, first)) == 1, (kind, first)
    assert all("all_bad.jsonl line" in message for message in messages[0][1])
    assert trainer.global_step == 6 and all(torch.isfinite(p).all() for p in model.parameters())


# --- scale --------------------------------------------------------------------------------------------------
def test_a_row_without_a_split_among_rows_with_one_is_named_or_dropped(corpus, tmp_path):
    rows = [json.loads(line) for line in corpus.read_text().splitlines()][:6]
    for index, row in enumerate(rows):
        row["split"] = "val" if index < 2 else "train"
    del rows[3]["split"]  # manifest line 4
    (tmp_path / "files").symlink_to(corpus.parent / "files")
    (tmp_path / "gap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"gap.jsonl line 4: no 'split' value, but other rows have one"):
        datamodule(tmp_path / "gap.jsonl")
    skipped = datamodule(tmp_path / "gap.jsonl", on_error="skip", batch_size=1)
    assert [r["line"] for r in skipped.rows["train"]] == [3, 5, 6]
    assert [r["line"] for r in skipped.rows["val"]] == [1, 2]
    assert sum(len(report["read"]) for report in skipped.skip_report.values()) == 1


def test_rows_are_kept_by_column_and_read_back_as_the_checked_rows(corpus):
    dm = datamodule(corpus, split_fractions=(0.5, 0.25, 0.25))
    raw = {index + 1: json.loads(line) for index, line in enumerate(corpus.read_text().splitlines())}
    for split, rows in dm.rows.items():
        assert len(rows) == len(list(rows)) and rows[-1] == list(rows)[-1]
        for row in rows:
            source = raw[row["line"]]
            assert row == {"line": row["line"], "split": None, "image": corpus.parent / source["image"],
                           "audio": corpus.parent / source["audio"], "video": corpus.parent / source["video"],
                           "text": source["caption"], "label": source["label"]}
    assert dm.rows["train"].column("text") == [row["text"] for row in dm.rows["train"]]


def test_indexing_a_large_manifest_keeps_no_object_per_row(tmp_path):
    """20,000 rows over one file: the memory Python allocates while the manifest is read, checked and split
    (tracemalloc's peak) stays under 300 bytes a row: the caption and the path string fit, a dict and a
    ``Path`` per row do not."""
    import tracemalloc

    write_corpus(tmp_path, 1)
    with open(tmp_path / "large.jsonl", "w") as handle:
        for index in range(20_000):
            handle.write(json.dumps({"image": "files/0.png", "caption": f"a red square number {index}"}) + "\n")
    tracemalloc.start()
    dm = ManifestDataModule(str(tmp_path / "large.jsonl"), image_size=16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sum(len(rows) for rows in dm.rows.values()) == 20_000
    assert peak / 20_000 < 300, f"{peak / 20_000:.0f} bytes a row"


def test_cut_captions_of_a_large_manifest_are_counted_on_an_even_sample(corpus, tmp_path, caplog, monkeypatch):
    import mmgen_lightning.datamodules.manifest as manifest_module

    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    for index, row in enumerate(rows):
        row["caption"] = "word " * (3 + index % 4 * 4)  # 3, 7, 11, 15 words
    (tmp_path / "files").symlink_to(corpus.parent / "files")
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(manifest_module, "LENGTH_CHECK_SAMPLE", 8)
    dm = datamodule(tmp_path / "long.jsonl", max_text_length=10)
    with caplog.at_level("WARNING"):
        dm.tokenizer
    # 16 rows, every 2nd encoded: split order varies, but half of any even sample has 11 or 15 words
    messages = [r.getMessage() for r in caplog.records if "longer than max_text_length" in r.getMessage()]
    assert len(messages) == 1 and re.search(r": \d of 8 captions \(one in every 2 of 16\) are longer than "
                                            r"max_text_length=10 allows \(8 tokens; the longest has 1[15]\)",
                                            messages[0]), messages

"""Bad input through the real `mmgen` entry point, in-process: each case must end in one clear line on
stderr (`mmgen <command>: error: ...` naming the file or option) with exit status 2 (usage) or 1 (data,
checkpoint), or in a documented correct behaviour (a warning, a refusal to overwrite); no pre-existing file
may change. Tiny checkpoints are built once per module."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from mmgen_lightning.cli import main
from tests.conftest import ToyDataModule

def fit_and_save(model, datamodule, path: Path, steps: int = 2) -> Path:
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=path.parent)
    trainer.fit(model, datamodule=datamodule)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoints (a VAE over image/text/audio/label, a VQVAE, a VAE trained on a manifest), a manifest
    with files, and a folder of files a user already has (checked before and after every case)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bad_input")
    from mmgen_lightning.models.vae import MultimodalVAE
    from mmgen_lightning.models.vqvae import VQVAE

    toy = ToyDataModule(["image", "text", "audio", "label"], size=16, batch_size=8)
    toy.setup("fit")
    vae = fit_and_save(MultimodalVAE(toy.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16,
                                                             "n_mels": 16}), toy, root / "vae.ckpt")
    toy_image = ToyDataModule(["image"], size=16, batch_size=8)
    toy_image.setup("fit")
    vq = fit_and_save(VQVAE(toy_image.data_spec, network={"num_codes": 8, "code_dim": 4, "width": 8}), toy_image, root / "vqvae.ckpt")

    data = root / "data"
    data.mkdir()
    rows = []
    for index in range(12):
        pixels = np.full((16, 16, 3), 20 * index % 255, dtype=np.uint8)
        Image.fromarray(pixels).save(data / f"{index}.png")
        rows.append({"image": f"{index}.png", "caption": ["a red circle", "a blue square"][index % 2]})
    manifest = data / "data.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from mmgen_lightning.datamodules.manifest import ManifestDataModule

    user = ManifestDataModule(str(manifest), image_size=16, batch_size=4, split_fractions=(0.6, 0.2, 0.2))
    user.setup("fit")
    manifest_vae = fit_and_save(MultimodalVAE(user.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16}),
                                user, root / "manifest_vae.ckpt")

    from mmgen_lightning.models.aligner import Aligner

    toy_pairs = ToyDataModule(["image", "text"], size=8)
    aligner = Aligner(toy_pairs.data_spec, network={"embed_dim": 8, "width": 16, "encoder_layers": 1,
                                                  "text_layers": 1, "num_heads": 2})
    aligner.tokenizer = toy_pairs.tokenizer  # what fitting on the datamodule would set
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=root)
    trainer.strategy.connect(aligner)
    trainer.save_checkpoint(root / "aligner.ckpt")

    files = root / "files"  # what a user already has: nothing here may change
    files.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(files / "picture.png")
    Image.fromarray(np.zeros((8, 64, 3), dtype=np.uint8)).save(files / "wide.png")
    (files / "notes.txt").write_text("keep me\n")
    (files / "empty.png").write_bytes(b"")
    (files / "text.png").write_text("not a picture")
    soundfile.write(files / "tone.wav", 0.5 * np.sin(np.arange(2000) / 3).astype(np.float32), 8000)
    soundfile.write(files / "nan.wav", np.full(2000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    soundfile.write(files / "inf.wav", np.full(2000, np.inf, dtype=np.float32), 8000, subtype="FLOAT")
    soundfile.write(files / "silent0.wav", np.zeros(0, dtype=np.float32), 8000)
    (files / "report.json").write_text("{}\n")
    (files / "empty.yaml").write_text("")
    (files / "comments.yaml").write_text("# only a comment\n")
    (files / "empty.jsonl").write_text("\n")
    earlier = files / "earlier_run"  # an earlier `mmgen generate`
    earlier.mkdir()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(earlier / "00000_image.png")
    (earlier / "manifest.jsonl").write_text(json.dumps({"file": "00000_image.png", "to": "image"}) + "\n")
    shards = files / "shards"
    shards.mkdir()
    (shards / "mmgen.json").write_text("{}\n")
    torch.save({"a": torch.zeros(1)}, files / "plain.pt")
    (files / "garbage.ckpt").write_bytes(b"\x00garbage" * 20)
    (files / "empty.ckpt").write_bytes(b"")
    return {"root": root, "vae": vae, "vqvae": vq, "manifest_vae": manifest_vae, "manifest": manifest,
            "aligner": root / "aligner.ckpt", "files": files}


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``mmgen ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(argv, code, names, capsys, world, command=None):
    """``argv`` exits with ``code`` and one error line that mentions each of ``names``; nothing changed."""
    command = argv[0] if command is None else command
    before = checksums(world["files"])
    status, _, err = run(argv, capsys)
    prefix = f"mmgen {command}: error: " if command else "mmgen: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert status == code, (status, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert checksums(world["files"]) == before
    return lines[0]


# --- generate ----------------------------------------------------------------------------------
def generate(world, *extra, ckpt="vae", out="new", to="image"):
    ckpt_path = world[ckpt] if ckpt in ("vae", "vqvae", "manifest_vae") else ckpt
    return ["generate", "--ckpt", str(ckpt_path), "--to", to, "--out", str(world["root"] / out), *map(str, extra)]


GENERATE_USAGE = [  # (extra arguments, words the message must name); exit status 2
    (["--num", "0"], ["--num"]), (["--num", "-3"], ["--num"]), (["--num", "abc"], ["--num"]),
    (["--batch_size", "0"], ["--batch_size"]), (["--batch-size", "-1"], ["--batch_size"]),
    (["--seed", "-1"], ["--seed"]), (["--seed", str(2**64)], ["--seed"]),
    (["--temperature", "-1"], ["--temperature"]), (["--temperature", "nan"], ["--temperature", "finite"]),
    (["--top_k", "-1"], ["--top_k"]), (["--top_k", "0"], ["--top_k"]), (["--top_p", "0"], ["--top_p"]),
    (["--top_p", "1.5"], ["--top_p"]), (["--truncation", "-0.5"], ["--truncation"]),
    (["--truncation", "inf"], ["--truncation"]), (["--guidance_scale", "nan"], ["--guidance_scale"]),
    (["--num_beams", "0"], ["--num_beams"]), (["--steps", "0"], ["--steps"]),
    (["--steps", "5"], ["--steps", "MultimodalVAE", "truncation"]),
    (["--guidance_scale", "2"], ["--guidance_scale", "MultimodalVAE"]),
    (["--num_beams", "2"], ["--num_beams", "MultimodalVAE"]),
    (["--text", ""], ["--text"]), (["--text", "   "], ["--text"]),
    (["--text", "class one", "--text", "class two", "--label", "1"], ["--text", "--label"]),
    (["--label", "-1"], ["--label"]), (["--label", "99"], ["--label 99", "4 classes"]),
    (["--foo", "1"], ["--foo"]), (["--device", "nonsense"], ["--device"]),
    (["--guidance_start", "0.8", "--guidance_stop", "0.2"], ["guidance interval is reversed",
                                                             "--guidance_start 0.8 --guidance_stop 0.2"]),
]


@pytest.mark.parametrize("extra,names", GENERATE_USAGE, ids=[" ".join(e) for e, _ in GENERATE_USAGE])
def test_generate_usage_errors(world, capsys, extra, names):
    assert_error(generate(world, *extra), 2, names, capsys, world)
    assert not (world["root"] / "new").exists()  # refused before anything was written


def test_generate_from_an_aligner_says_it_generates_nothing(world, capsys, tmp_path):
    from mmgen_lightning.models.aligner import Aligner

    toy = ToyDataModule(["image", "text"], size=8)
    model = Aligner(toy.data_spec, network={"embed_dim": 8, "width": 16, "encoder_layers": 1, "text_layers": 1,
                                            "num_heads": 2})
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "aligner.ckpt")
    assert_error(generate(world, "--text", "class one", ckpt=str(tmp_path / "aligner.ckpt")), 2,
                 ["Aligner cannot generate text->image", "generates nothing", "mmgen retrieve"], capsys, world)


def test_generate_refuses_a_direction_and_a_knob_the_family_lacks(world, capsys):
    assert_error(generate(world, to="video"), 2, ["MultimodalVAE cannot generate", "->video", "it serves"], capsys,
                 world)
    assert_error(generate(world, "--image", world["files"] / "picture.png", ckpt="vqvae", out="vq", to="image") +
                 ["--steps", "4"], 2, ["VQVAE has no sampling knob 'steps'", "takes no knobs"], capsys, world)
    assert_error(generate(world, "--to", "nope"), 2, ["--to"], capsys, world)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_generate_on_cuda_without_cuda_says_so(world, capsys):
    assert_error(generate(world, "--device", "cuda"), 2, ["--device cuda", "no usable CUDA"], capsys, world)


def test_generate_never_writes_over_a_users_files(world, capsys):
    files = world["files"]
    for out, names in ((files / "notes.txt", ["is a file", "--out"]),
                       (files / "notes.txt" / "sub", ["notes.txt is a file", "--out"]),
                       (files / "earlier_run", ["already holds 2 files", "--overwrite"]),
                       (files, ["already holds", "--overwrite"])):
        assert_error(generate(world, out=out), 2, names, capsys, world)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_generate_into_a_read_only_folder_is_refused_before_loading(world, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_error(generate(world, out=locked / "out"), 2, ["cannot write in", "--out"], capsys, world)
    finally:
        locked.chmod(0o700)


CHECKPOINTS = [("missing.ckpt", ["--ckpt", "not found"]), ("", ["--ckpt", "folder"]),
               ("garbage.ckpt", ["garbage.ckpt", "not a loadable checkpoint"]),
               ("empty.ckpt", ["empty.ckpt", "not a loadable checkpoint"]),
               ("plain.pt", ["plain.pt", "no 'mmgen' entry"]), ("notes.txt", ["notes.txt"])]


@pytest.mark.parametrize("name,names", CHECKPOINTS, ids=[c[0] or "folder" for c in CHECKPOINTS])
def test_generate_from_a_bad_checkpoint(world, capsys, name, names):
    assert_error(generate(world, ckpt=str(world["files"] / name)), 1, names, capsys, world)


CONDITION_FILES = [("--image", "missing.png", ["not found"]), ("--image", "empty.png", ["empty (0 bytes)"]),
                   ("--image", "text.png", ["cannot decode the image"]), ("--image", "earlier_run", ["folder"]),
                   ("--audio", "nan.wav", ["NaN or Inf"]), ("--audio", "inf.wav", ["NaN or Inf"]),
                   ("--audio", "silent0.wav", ["no samples"]), ("--audio", "notes.txt", ["cannot decode the audio"])]


@pytest.mark.parametrize("option,name,names", CONDITION_FILES, ids=[f"{o} {n}" for o, n, _ in CONDITION_FILES])
def test_generate_from_a_bad_condition_file(world, capsys, option, name, names):
    path = world["files"] / name
    assert_error(generate(world, option, path, to="text" if option == "--image" else "image"), 1,
                 [f"{option} {path}", *names], capsys, world)
    assert not (world["root"] / "new").exists()


def test_generate_refuses_a_decompression_bomb_naming_the_limit(world, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # picture.png has 256 pixels: a "bomb" at this limit
    assert_error(generate(world, "--image", world["files"] / "picture.png", to="text"), 1,
                 ["picture.png", "decompression bomb", "MAX_IMAGE_PIXELS = 100"], capsys, world)


def test_generate_warns_about_what_the_model_will_not_read(world, capsys):
    """Documented behaviour: a caption longer than the context is cut and unknown words are read as [UNK],
    each with a warning naming the cut / the words; a wide image is centre-cropped with a warning."""
    long_caption = " ".join(["one"] * 5000)
    status, out, err = run(generate(world, "--text", long_caption, "--text", "class zebra purple", "--num", "1",
                                    out="warned"), capsys)
    assert status == 0, err
    assert "5000 tokens long, but the model reads at most 4" in err and "'zebra', 'purple'" in err
    assert len((world["root"] / "warned" / "manifest.jsonl").read_text().splitlines()) == 2
    status, _, err = run(generate(world, "--image", world["files"] / "wide.png", "--num", "1", to="text",
                                  out="wide"), capsys)
    assert status == 0 and "64x8, far from square" in err, err


def test_generate_overwrite_replaces_the_earlier_run_consistently(world, capsys):
    out = world["root"] / "rerun"
    assert run(generate(world, "--text", "class one", "--num", "3", out="rerun"), capsys)[0] == 0
    (out / "mine.txt").write_text("a file the user put there\n")
    status, _, err = run(generate(world, "--text", "class two", "--num", "2", out="rerun"), capsys)
    assert status == 2 and "--overwrite" in err and len(list(out.glob("*_image.png"))) == 3
    assert run(generate(world, "--text", "class two", "--num", "2", "--overwrite", out="rerun"), capsys)[0] == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["condition"] for row in rows] == [{"text": "class two"}] * 2
    assert sorted(p.name for p in out.iterdir()) == ["00000_image.png", "00001_image.png", "manifest.jsonl",
                                                      "mine.txt"]


# --- evaluate ----------------------------------------------------------------------------------
def evaluate(world, *extra, ckpt="manifest_vae", out="report.json"):
    ckpt_path = world[ckpt] if ckpt in ("vae", "vqvae", "manifest_vae") else ckpt
    return ["evaluate", "--ckpt", str(ckpt_path), "--out", str(world["root"] / out), *map(str, extra)]


EVALUATE_CASES = [  # (extra, exit status, words)
    (["--direction", "text->video"], 2, ["MultimodalVAE cannot generate text->video", "--direction"]),
    (["--direction", "text-image"], 2, ["--direction text-image"]),
    (["--direction", "text->smell"], 2, ["--direction text->smell", "smell"]),
    (["--limit", "0"], 2, ["--limit"]), (["--batch_size", "0"], 2, ["--batch_size"]),
    (["--batch-size", "-2"], 2, ["--batch_size"]), (["--seed", "-5"], 2, ["--seed"]),
    (["--split", "nope"], 2, ["--split"]), (["--config", "missing.yaml"], 2, ["--config missing.yaml"]),
    (["--nope"], 2, ["--nope"]),
    (["--config", "broken.yaml"], 2, ["--config", "broken.yaml", "not a YAML mapping"]),
    (["--steps", "4"], 2, ["--steps", "MultimodalVAE", "truncation"]),  # a knob the family does not take
    (["--temperature", "nan"], 2, ["--temperature", "finite"]),
    (["--truncation", "-1"], 2, ["--truncation", ">= 0"]),
    (["--config", "empty.yaml"], 2, ["--config empty.yaml", "the config is empty", "data: section"]),
    (["--config", "comments.yaml"], 2, ["--config comments.yaml", "the config is empty"]),
    (["--guidance_start", "0.8", "--guidance_stop", "0.2"], 2, ["guidance interval is reversed",
                                                                "--guidance_start 0.8 --guidance_stop 0.2"]),
]


@pytest.mark.parametrize("extra,code,names", EVALUATE_CASES, ids=[" ".join(e) for e, _, _ in EVALUATE_CASES])
def test_evaluate_bad_options_fail_at_once(world, capsys, extra, code, names, monkeypatch):
    monkeypatch.chdir(world["files"])  # relative --config paths
    (world["root"] / "broken.yaml").write_text("data: [unclosed\n")
    extra = [str(world["root"] / e) if e == "broken.yaml" else e for e in extra]
    assert_error(evaluate(world, *extra), code, names, capsys, world)
    assert not (world["root"] / "report.json").exists()


def test_evaluate_refuses_a_reversed_guidance_interval_before_any_judge_is_trained(world, capsys, monkeypatch,
                                                                                   tmp_path):
    import mmgen_lightning.metrics.judges as judges
    import mmgen_lightning.metrics.report as report

    def no_judge(*args, **kwargs):
        raise AssertionError("a judge was trained before the options were checked")

    monkeypatch.setenv("MMGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(judges, "get_judge", no_judge)
    monkeypatch.setattr(report, "get_judge", no_judge)
    assert_error(evaluate(world, "--guidance_start", "0.8", "--guidance_stop", "0.2", ckpt="vae"), 2,
                 ["guidance interval is reversed", "guidance_start <= guidance_stop"], capsys, world)
    assert not (tmp_path / "cache").exists()


def test_evaluate_bad_checkpoint_and_output(world, capsys):
    files = world["files"]
    assert_error(evaluate(world, ckpt=files / "missing.ckpt"), 1, ["--ckpt", "missing.ckpt"], capsys, world)
    assert_error(evaluate(world, ckpt=files / "garbage.ckpt"), 1, ["garbage.ckpt"], capsys, world)
    assert_error(["evaluate", "--ckpt", str(world["manifest_vae"]), "--out", str(files / "report.json")], 2,
                 ["report.json already exists", "--overwrite"], capsys, world)
    assert_error(["evaluate", "--ckpt", str(world["manifest_vae"]), "--out", str(files)], 2, ["is a folder"],
                 capsys, world)
    # the checkpoint's datamodule cannot be rebuilt outside the test package: said, not a stack
    assert_error(evaluate(world, ckpt="vae"), 1, ["tests.conftest.ToyDataModule"], capsys, world)


def test_evaluate_on_a_manifest_reports_what_it_can_measure(world, capsys):
    status, out, err = run(evaluate(world, out="manifest_report.json"), capsys)
    assert status == 0, err
    report = json.loads((world["root"] / "manifest_report.json").read_text())
    assert report["likelihood"]["kind"].startswith("iwae") and math.isfinite(report["likelihood"]["bits_per_dim"])
    assert "need judged attributes" in report["not_measured"] and "Not measured" in out


# --- shard -------------------------------------------------------------------------------------
def shard(world, *extra, out="shards_new", manifest=None):
    return ["shard", "--data.manifest", str(manifest or world["manifest"]), "--data.image_size", "16",
            "--out", str(world["root"] / out), *map(str, extra)]


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_shard_bad_inputs(world, capsys, tmp_path):
    files = world["files"]
    assert_error(shard(world, out=files / "shards"), 2, ["shards already holds", "--overwrite"], capsys, world)
    assert_error(shard(world, out=files / "notes.txt"), 2, ["is a file"], capsys, world)
    assert_error(shard(world, "--workers", "0"), 2, ["--workers"], capsys, world)
    assert_error(shard(world, "--limit", "0"), 2, ["--limit must be >= 1"], capsys, world)
    assert_error(shard(world, "--chunk_bytes", "abc"), 2, ["--chunk_bytes", "'abc'"], capsys, world)
    assert_error(shard(world, "--data.nope", "1"), 2, ["nope"], capsys, world)
    assert_error(shard(world, manifest=tmp_path / "none.jsonl"), 1, ["none.jsonl"], capsys, world)
    image = str(files / "picture.png")
    cases = [([{"image": str(files / "missing.png"), "caption": "a"}], ["line 1", "image file not found"]),
             ([{"image": image, "caption": "a"}, {"image": str(files / "empty.png"), "caption": "b"}],
              ["line 2", "empty (0 bytes)"]),
             ([{"image": image, "caption": ""}], ["line 1", "caption is empty"]),
             ([{"image": image, "caption": "a", "colour": "red"}], ["line 1", "unknown column 'colour'"])]
    for rows, names in cases:
        assert_error(shard(world, manifest=write_manifest(tmp_path, rows)), 1, names, capsys, world)
    (tmp_path / "broken.jsonl").write_text('{"image": "a.png", "caption": "x"\n')
    assert_error(shard(world, manifest=tmp_path / "broken.jsonl"), 1, ["broken.jsonl line 1", "not valid JSON"],
                 capsys, world)
    assert_error(shard(world, "--data.on_error", "explode"), 2, ["on_error"], capsys, world)


def test_shard_decoding_errors_stop_with_the_line(world, capsys, tmp_path):
    """Errors found only when a file is decoded (in the writer process) name the row too, and do not hang."""
    files = world["files"]
    rows = [{"image": str(files / "picture.png"), "caption": "a"}] * 3 + [
        {"image": str(files / "text.png"), "caption": "b"}]
    line = assert_error(shard(world, "--data.split_fractions", "[1.0, 0.0, 0.0]",
                              manifest=write_manifest(tmp_path, rows)), 1, ["text.png"], capsys, world)
    assert "cannot decode the image" in line


def test_shard_refuses_a_decompression_bomb_naming_the_limit(world, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # inherited by the forked shard writer
    rows = [{"image": str(world["files"] / "picture.png"), "caption": "a"}] * 2
    assert_error(shard(world, "--data.split_fractions", "[1.0, 0.0, 0.0]", manifest=write_manifest(tmp_path, rows)),
                 1, ["picture.png", "decompression bomb", "MAX_IMAGE_PIXELS = 100"], capsys, world)


def test_manifest_captions_cut_by_the_context_are_reported_once(world, tmp_path, caplog):
    from mmgen_lightning.datamodules.manifest import ManifestDataModule

    image = str(world["files"] / "picture.png")
    rows = [{"image": image, "caption": "a red circle"}] * 3 + [{"image": image, "caption": "word " * 40}]
    data = ManifestDataModule(str(write_manifest(tmp_path, rows)), image_size=16, max_text_length=8,
                              split_fractions=(1.0, 0.0, 0.0))
    with caplog.at_level("WARNING"):
        data.tokenizer, data.tokenizer
    assert [r.getMessage() for r in caplog.records if "longer than max_text_length" in r.getMessage()] == [
        f"{data.manifest}: 1 of 4 captions are longer than max_text_length=8 allows (6 tokens; the longest has 40) "
        "and are cut; raise max_text_length to keep them whole"]


# --- retrieve ----------------------------------------------------------------------------------
def retrieve(world, *extra, index=None):
    return ["retrieve", "--ckpt", str(world["aligner"]), "--index", str(index or world["manifest"]), "--top", "2",
            *map(str, extra)]


def test_retrieve_bad_inputs(world, capsys):
    files = world["files"]
    assert_error(retrieve(world, "--query_text", ""), 2, ["the caption is empty", "--query_text ''"], capsys, world)
    assert_error(retrieve(world, "--query_text", "   "), 2, ["--query_text"], capsys, world)
    assert_error(retrieve(world, "--query_text", "class one", index=files / "empty.jsonl"), 1,
                 ["the index has no rows", f"--index {files / 'empty.jsonl'}"], capsys, world)
    assert_error(retrieve(world, "--query_image", files / "missing.png"), 1, ["--query_image", "not found"],
                 capsys, world)
    assert_error(retrieve(world, "--query_image", files / "text.png"), 1, ["--query_image", "cannot decode"],
                 capsys, world)
    assert_error(retrieve(world, "--query_text", "class one", "--top", "0"), 2, ["--top"], capsys, world)
    assert_error(retrieve(world, "--query_text", "class one", "--out", files / "notes.txt"), 2,
                 ["notes.txt already exists", "--overwrite"], capsys, world)
    assert_error(["retrieve", "--ckpt", str(world["vae"]), "--index", str(world["manifest"]), "--query_text",
                  "class one"], 1, ["MultimodalVAE", "not an Aligner"], capsys, world)


def test_retrieve_warns_about_words_the_aligner_will_not_read(world, capsys):
    """As generate does: every word unknown to the aligner's tokenizer, or a query cut before its content."""
    status, out, err = run(retrieve(world, "--query_text", "purple zebra"), capsys)
    assert status == 0 and "rank" in out, err
    assert ("mmgen retrieve: warning: --query_text 'purple zebra': 2 unknown token(s) ('purple', 'zebra') are read "
            "as [UNK]") in err
    status, out, err = run(retrieve(world, "--query_text", "class class class class one"), capsys)
    assert status == 0, err
    assert ("mmgen retrieve: warning: --query_text 'class class class class one': the caption is 5 tokens long, "
            "but the model reads at most 4") in err and "cut after 'class class class class'" in err
    status, _, err = run(retrieve(world, "--query_text", "class one"), capsys)
    assert status == 0 and "warning" not in err, err


# --- fit ---------------------------------------------------------------------------------------
def fit_config(tmp_path: Path, data: dict, model: dict | None = None, name: str = "config.yaml", **trainer) -> Path:
    import yaml

    config = {"seed_everything": 0,
              "trainer": {"max_steps": 2, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                          "logger": False, "limit_val_batches": 0, "enable_model_summary": False,
                          "default_root_dir": str(tmp_path),
                          "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}],
                          **trainer},
              "model": model or {"class_path": "mmgen_lightning.models.MultimodalVAE",
                                 "init_args": {"network": {"latent_dim": 4, "width": 8, "text_width": 16}}},
              "data": data}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def manifest_data(manifest: Path, **init_args) -> dict:
    return {"class_path": "mmgen_lightning.datamodules.ManifestDataModule",
            "init_args": {"manifest": str(manifest), "image_size": 16, "batch_size": 2, **init_args}}


def test_fit_bad_inputs(world, capsys, tmp_path):
    files = world["files"]
    bad = write_manifest(tmp_path, [{"image": str(files / "missing.png"), "caption": "a"}])
    line = assert_error(["fit", "--config", str(fit_config(tmp_path, manifest_data(bad)))], 1,
                        ["rows.jsonl line 1", "missing.png", "image file not found", "on_error"], capsys, world)
    assert "Union subtypes" not in line and "Namespace(" not in line
    config = fit_config(tmp_path, manifest_data(world["manifest"], batch_size=64))
    assert_error(["fit", "--config", str(config)], 2, ["train split has 10 rows", "batch_size=64"], capsys, world)
    assert not (tmp_path / "ckpt").exists()
    good = str(fit_config(tmp_path, manifest_data(world["manifest"])))
    assert_error(["fit", "--config", good, "--trainer.max_steps", "abc"], 2, ["max_steps"], capsys, world)
    assert_error(["fit", "--config", good, "--model.init_args.nope", "1"], 2, ["nope"], capsys, world)
    assert_error(["fit", "--config", str(tmp_path / "missing.yaml")], 2, ["missing.yaml"], capsys, world)
    assert_error(["fit", "--config", good, "--data.init_args.batch_size", "0"], 2, ["batch_size"], capsys, world)
    assert_error(["fit", "--config", good, "--ckpt_path", str(world["vqvae"])], 1,
                 ["VQVAE", "MultimodalVAE", "--ckpt_path"], capsys, world)
    assert_error(["fit", "--config", good, "--ckpt_path", str(files / "garbage.ckpt")], 1, ["garbage.ckpt"],
                 capsys, world)
    for empty in ("empty.yaml", "comments.yaml"):
        assert_error(["fit", "--config", str(files / empty)], 2, [f"--config {files / empty}", "the config is empty",
                                                                  "trainer, model and data"], capsys, world)
    assert_error(["fit", "--config", good, "--seed_everything", "-1"], 2, ["seed -1", "seed_everything"], capsys,
                 world)
    assert_error(["fit", "--config", good, "--data.init_args.seed", "-1"], 2, ["seed must be in"], capsys, world)
    streaming = {"class_path": "mmgen_lightning.datamodules.StreamingDataModule",
                 "init_args": {"input_dir": str(tmp_path / "no_shards")}}
    assert_error(["fit", "--config", str(fit_config(tmp_path, streaming, name="streaming.yaml"))], 2, ["no_shards", "mmgen shard"], capsys,
                 world)
    assert_error(["validate", "--config", good, "--ckpt_path", str(world["vqvae"])], 1,
                 ["VQVAE", "MultimodalVAE"], capsys, world)
    assert_error(["test", "--config", good, "--ckpt_path", str(tmp_path / "none.ckpt")], 1,
                 ["checkpoint not found", "none.ckpt"], capsys, world)
    if not torch.cuda.is_available():
        assert_error(["fit", "--config", good, "--trainer.accelerator", "gpu"], 2, ["gpu"], capsys, world)
    assert_error(["fitt"], 2, ["unknown subcommand 'fitt'", "allowed: fit"], capsys, world, command="")


def test_fit_from_a_checkpoint_of_other_sizes_names_the_first_mismatch(world, capsys, tmp_path):
    """The same family trained on 16 px images, resumed on 32 px data: one line naming the checkpoint and the
    first tensor whose shape differs, not torch's list of every one."""
    small = str(fit_config(tmp_path, manifest_data(world["manifest"]), max_steps=1))
    assert run(["fit", "--config", small], capsys)[0] == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    (tmp_path / "larger").mkdir()
    larger = str(fit_config(tmp_path / "larger", manifest_data(world["manifest"], image_size=32)))
    line = assert_error(["fit", "--config", larger, "--ckpt_path", str(ckpt)], 1,
                        [f"(--ckpt_path {ckpt})", "does not fit the MultimodalVAE this config builds",
                         "more differences", "data settings"], capsys, world)
    assert re.search(r"builds: [\w.]+ has shape \(\d+(, \d+)*\) in the checkpoint but \(\d+(, \d+)*\) in the "
                     r"model \(and \d+ more differences\)", line), line
    assert not (tmp_path / "larger" / "ckpt").exists()


def test_fit_names_a_bad_file_found_in_a_loader_worker(world, capsys, tmp_path):
    """A file that fails to decode in a DataLoader worker process is reported by its row, not the worker's stack."""
    image, broken = str(world["files"] / "picture.png"), str(world["files"] / "text.png")
    rows = [{"image": image, "caption": "a red circle", "split": "train"}] * 3 + [
        {"image": broken, "caption": "a blue square", "split": "train"}]
    data = manifest_data(write_manifest(tmp_path, rows), num_workers=1, batch_size=4)
    line = assert_error(["fit", "--config", str(fit_config(tmp_path, data))], 1,
                        ["rows.jsonl line 4", "text.png", "cannot decode the image"], capsys, world)
    assert "Traceback" not in line and "worker" not in line


def test_fit_into_a_folder_holding_a_run_keeps_it_and_says_where_the_new_one_went(world, capsys, tmp_path):
    config = str(fit_config(tmp_path, manifest_data(world["manifest"])))
    written = Path(config).read_text()
    assert run(["fit", "--config", config], capsys)[0] == 0
    # with the logger off the run's folder is the config's: the resolved config goes beside it, not over it
    assert Path(config).read_text() == written and (tmp_path / "config.run.yaml").is_file()
    first = checksums(tmp_path / "ckpt")
    first_config = (tmp_path / "config.run.yaml").read_text()
    status, _, err = run(["fit", "--config", config], capsys)
    assert status == 0, err
    assert "already holds a run's checkpoints" in err and "last-v1.ckpt" in err
    assert f"already holds a run's config.run.yaml; it is kept, and this run's config is saved beside it as " \
           f"config.run-v1.yaml" in err
    assert {k: v for k, v in checksums(tmp_path / "ckpt").items() if k in first} == first
    assert (tmp_path / "config.run.yaml").read_text() == first_config and (tmp_path / "config.run-v1.yaml").is_file()
    assert f"its config: {tmp_path / 'config.run-v1.yaml'}" in err


def test_fit_twice_into_the_default_run_folder_keeps_the_first_runs_config(world, capsys, tmp_path):
    """Logger off and Lightning's default checkpoint folder (``default_root_dir/checkpoints``): the second run
    warns about both, writes ``config-v1.yaml`` and never touches the first run's ``config.yaml``."""
    run_folder = tmp_path / "run"
    config = str(fit_config(tmp_path, manifest_data(world["manifest"]), callbacks=[],
                            default_root_dir=str(run_folder)))
    assert run(["fit", "--config", config], capsys)[0] == 0
    kept = checksums(run_folder)
    assert sorted(kept) == ["checkpoints/epoch=0-step=2.ckpt", "config.yaml"], sorted(kept)
    status, _, err = run(["fit", "--config", config, "--trainer.max_steps", "3"], capsys)
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("mmgen fit: warning:")]
    assert warnings == [
        f"mmgen fit: warning: {run_folder} already holds a run's config.yaml; it is kept, and this run's config is "
        "saved beside it as config-v1.yaml",
        f"mmgen fit: warning: {run_folder / 'checkpoints'} already holds a run's checkpoints (epoch=0-step=2.ckpt); "
        "they are kept, and this run's get a -vN suffix there (e.g. last-v1.ckpt); the names follow at the end"]
    assert {k: v for k, v in checksums(run_folder).items() if k in kept} == kept
    assert "max_steps: 3" in (run_folder / "config-v1.yaml").read_text()


# --- the handler itself --------------------------------------------------------------------------
def test_debug_shows_the_traceback_and_a_real_bug_keeps_its_stack(world, capsys, monkeypatch):
    argv = generate(world, "--num", "0")
    with pytest.raises(ValueError, match="--num must be >= 1"):
        main(argv + ["--debug"])
    monkeypatch.setenv("MMGEN_DEBUG", "1")
    with pytest.raises(ValueError, match="--num must be >= 1"):
        main(argv)
    monkeypatch.delenv("MMGEN_DEBUG")

    import mmgen_lightning.service as service

    def broken(request):
        return {}["a bug"]

    monkeypatch.setattr(service, "check_request", broken)
    with pytest.raises(KeyError):
        main(generate(world))


def test_the_python_api_names_the_knobs_a_family_takes(world):
    from mmgen_lightning.knobs import Knob, UnknownKnobError
    from mmgen_lightning.models.base import load_generator

    model = load_generator(world["vae"])
    with pytest.raises(UnknownKnobError, match=r"'steps': MultimodalVAE has no sampling knob .* knobs are: "
                                               r"truncation, temperature, top_k, griffin_lim_iterations"):
        model.generate({}, num_samples=1, to="image", steps=3)
    assert isinstance(UnknownKnobError("x"), TypeError)  # what Python itself would raise
    # a family's own declaration is checked by generate() itself, with its range
    model.sampling_knobs = {"truncation": Knob(float, 0, 2, help="latent noise scale")}
    with pytest.raises(ValueError, match=r"truncation must be float in \[0, 2\], got 3"):
        model.generate({}, num_samples=1, to="image", truncation=3.0)
    assert model.generate({}, num_samples=1, to="image", truncation=0.5)["image"].shape[0] == 1

"""`mmgen evaluate` writes a JSON report and a Markdown table for a checkpoint of every family."""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from mmgen_lightning.cli import main
from mmgen_lightning.metrics.report import markdown


def vae(spec, folder=None):
    from mmgen_lightning.models.vae import MultimodalVAE

    return MultimodalVAE(spec, network={"latent_dim": 4, "width": 8, "text_width": 16})


def gan(spec, folder=None):
    from mmgen_lightning.models.gan import ConditionalGAN

    return ConditionalGAN(spec, condition="label",
                          network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16, "n_mels": 16})


def captioner(spec, folder=None):
    from mmgen_lightning.models.captioner import Captioner

    return Captioner(spec, modality="image", network={"width": 32, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0})


def vqvae(spec, folder=None):
    from mmgen_lightning.models.vqvae import VQVAE

    return VQVAE(spec, network={"num_codes": 16, "code_dim": 8, "width": 16})


def tokens(spec, folder):
    """A TokenTransformer over the codes of a briefly trained stage-1 VQVAE saved in ``folder``."""
    from mmgen_lightning.models.token_transformer import TokenTransformer

    stage1 = vqvae(spec)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=folder)
    images = torch.rand(8, spec["image_channels"], spec["image_size"], spec["image_size"]) * 2 - 1
    trainer.fit(stage1, train_dataloaders=DataLoader([{"image": images}], batch_size=None))
    trainer.save_checkpoint(folder / "vqvae.ckpt")
    return TokenTransformer(spec, vqvae_checkpoint=str(folder / "vqvae.ckpt"),
                            network={"width": 32, "num_layers": 2, "num_heads": 2, "dropout": 0.0})


FAMILIES = {  # family -> (builder, what its report must hold)
    "MultimodalVAE": (vae, {"coherence": ["text->image", "image->text"], "quality": ["text->image", "->image"],
                            "text": ["image->text", "label->text"], "likelihood": "iwae_8"}),
    "ConditionalGAN": (gan, {"coherence": ["label->image"], "quality": ["label->image"], "text": [],
                             "likelihood": None}),
    "Captioner": (captioner, {"coherence": ["image->text"], "quality": [], "text": ["image->text"],
                              "likelihood": "exact"}),
    "VQVAE": (vqvae, {"coherence": ["image->image"], "quality": ["image->image"], "text": [], "likelihood": None}),
    "TokenTransformer": (tokens, {"coherence": ["text->image", "image->text"], "quality": ["text->image", "->image"],
                                  "text": ["image->text"], "likelihood": None}),
}


def one_step_checkpoint(model, datamodule, folder):
    """``folder/model.ckpt`` of ``model`` after one training step on ``datamodule``."""
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=folder)
    trainer.fit(model, datamodule=datamodule)
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


@pytest.mark.parametrize("family", list(FAMILIES))
def test_evaluate_writes_a_report_for_each_family(family, digits, digits_judge, tmp_path, capsys):
    build, expected = FAMILIES[family]
    torch.manual_seed(0)
    ckpt = one_step_checkpoint(build(digits.data_spec, tmp_path), digits, tmp_path)

    out = tmp_path / "reports" / "report.json"
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--limit", "32", "--batch-size", "16"])
    report = json.loads(out.read_text())
    assert report["family"] == family and report["dataset"] == "digits" and report["samples"] == 32
    directions = [row["direction"] for row in report["coherence"]]
    assert all(d in directions for d in expected["coherence"]), directions
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["real_data"] >= 0.9 for row in report["coherence"])
    assert all(d in report["quality"] for d in expected["quality"]), report["quality"].keys()
    for scores in report["quality"].values():
        assert set(scores["judge"]) >= {"fid", "kid", "inception_score", "precision", "recall", "density", "coverage"}
    assert sorted(report["text"]) == sorted(expected["text"])
    assert (report["likelihood"] or {}).get("kind") == expected["likelihood"]
    table = out.with_suffix(".md").read_text()
    assert table == markdown(report) and table in capsys.readouterr().out
    assert f"### {family} on digits (test split, 32 samples)" in table


def test_evaluate_passes_sampling_knobs_to_generate(digits, digits_judge, tmp_path, monkeypatch):
    from mmgen_lightning.models.vae import MultimodalVAE

    ckpt = one_step_checkpoint(vae(digits.data_spec), digits, tmp_path)
    seen = []
    real = MultimodalVAE.generate

    def recording(self, conditions, num_samples, to=None, **sampling):
        seen.append(sampling)
        return real(self, conditions, num_samples, to=to, **sampling)

    monkeypatch.setattr(MultimodalVAE, "generate", recording)
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(tmp_path / "r.json"), "--limit", "16", "--batch_size", "16",
          "--direction", "text->image", "--truncation", "0.5"])
    assert seen and all(call == {"truncation": 0.5} for call in seen)


def test_evaluate_with_missing_inception_weights_stops_with_the_instructions(digits, digits_judge, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.delenv("MMGEN_INCEPTION_WEIGHTS", raising=False)
    model = vae(digits.data_spec)
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=digits)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "r.json"), "--limit", "16",
              "--inception", str(tmp_path / "nowhere.pth")])
    assert stop.value.code == 1
    assert re.search(r"^mmgen evaluate: error: Inception weights not found at .*nowhere.pth.*Download",
                     capsys.readouterr().err, re.MULTILINE)
    assert not (tmp_path / "r.json").exists()


def test_evaluate_adds_the_scenes_table_for_a_text_to_image_model_of_scenes(tmp_path, judge_cache):
    """A tiny FlowMatching after one step on scenes: the report holds the GenEval-style table of its samples on
    seen and held-out captions, with the real renders' scores (the ceiling) beside, and the Markdown shows it."""
    from mmgen_lightning.datamodules.scenes import ScenesDataModule
    from mmgen_lightning.models.flow import FlowMatching

    data = ScenesDataModule(train_size=64, val_size=8, test_size=8, heldout_size=8, batch_size=8)
    torch.manual_seed(0)
    model = FlowMatching(data.data_spec, condition="text", sampling={"steps": 2},
                         network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "condition_layers": 1})
    ckpt = one_step_checkpoint(model, data, tmp_path)
    out = tmp_path / "report.json"
    main(["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--limit", "4", "--batch_size", "16"])
    scenes = json.loads(out.read_text())["scenes"]
    for group in ("seen", "heldout"):
        model_scores, real_scores = scenes[group], scenes["real"][group]
        assert model_scores["captions"] == real_scores["captions"] == 4
        assert model_scores["samples"] == real_scores["samples"] == 32
        assert real_scores["accuracy"]["overall"] == 1.0  # the judge reads every real render right
        assert model_scores["accuracy"]["overall"] < 0.5  # one step of training draws no scene yet
    table = out.with_suffix(".md").read_text()
    assert "Scenes: 4 seen and 4 held-out captions, 8 samples each" in table
    assert re.search(r"^\| overall \| [\d.]+ \| [\d.]+ \| 1\.000 \| 1\.000 \|", table, re.MULTILINE), table

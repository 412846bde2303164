"""`mmgen evaluate` writes a JSON report and a Markdown table for a checkpoint of every family."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from mmgen_lightning.metrics.report import evaluate_cli, markdown


def vae(spec):
    from mmgen_lightning.models.vae import MultimodalVAE

    return MultimodalVAE(spec, latent_dim=4, width=8, text_width=16)


def gan(spec):
    from mmgen_lightning.models.gan import ConditionalGAN

    return ConditionalGAN(spec, condition="label", width=8, latent_dim=8, condition_dim=8, text_width=16, n_mels=16)


def captioner(spec):
    from mmgen_lightning.models.captioner import Captioner

    return Captioner(spec, modality="image", width=32, encoder_layers=1, decoder_layers=1, dropout=0.0)


FAMILIES = {  # family -> (builder, what its report must hold)
    "MultimodalVAE": (vae, {"coherence": ["text->image", "image->text"], "quality": ["text->image", "->image"],
                            "text": ["image->text", "label->text"], "likelihood": "iwae_8"}),
    "ConditionalGAN": (gan, {"coherence": ["label->image"], "quality": ["label->image"], "text": [],
                             "likelihood": None}),
    "Captioner": (captioner, {"coherence": ["image->text"], "quality": [], "text": ["image->text"],
                              "likelihood": "text"}),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_evaluate_writes_a_report_for_each_family(family, digits, digits_judge, tmp_path, capsys):
    build, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = build(digits.data_spec)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=digits)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)

    out = tmp_path / "reports" / "report.json"
    evaluate_cli(["--ckpt", str(ckpt), "--out", str(out), "--limit", "32", "--batch-size", "16"])
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


def test_evaluate_with_missing_inception_weights_stops_with_the_instructions(digits, digits_judge, tmp_path,
                                                                              monkeypatch):
    monkeypatch.delenv("MMGEN_INCEPTION_WEIGHTS", raising=False)
    model = vae(digits.data_spec)
    trainer = L.Trainer(accelerator="cpu", max_steps=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=digits)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(SystemExit, match="mmgen evaluate: Inception weights not found at .*nowhere.pth.*Download"):
        evaluate_cli(["--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "r.json"), "--limit", "16",
                      "--inception", str(tmp_path / "nowhere.pth")])

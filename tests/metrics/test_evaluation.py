"""The Evaluator and EvaluationCallback: one protocol, reproducible, and the same under 1 and 2 DDP processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from mmgen_lightning.callbacks.evaluation import EvaluationCallback
from mmgen_lightning.metrics.evaluator import Evaluator, default_directions, flatten
from mmgen_lightning.models.vae import MultimodalVAE

ROOT = Path(__file__).resolve().parents[2]
# Lightning's DDP launcher re-runs this script once per extra process
SCRIPT = textwrap.dedent(f"""
    import json, sys
    import torch
    sys.path.insert(0, {str(ROOT)!r})
    from tests.metrics.test_evaluation import validate_with_callback

    torch.set_num_threads(1)
    result = validate_with_callback(int(sys.argv[1]))
    if result is not None:
        json.dump(result, open(sys.argv[2], "w"))
""")


def validate_with_callback(devices: int) -> dict | None:
    """``trainer.validate`` of a seeded tiny VAE with an EvaluationCallback; the result on the first process."""
    from mmgen_lightning.datamodules.digits import DigitsDataModule

    datamodule = DigitsDataModule(modalities=["image", "text", "label"], batch_size=32)
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=datamodule.data_spec, latent_dim=8, width=8, text_width=16)
    callback = EvaluationCallback(directions=["text->image", "->image", "image->text", "label->text"],
                                  num_samples=64, batch_size=16, split="val")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        limit_val_batches=1, callbacks=[callback])
    logged = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:
        return None
    return {"results": callback.results, "logged": logged, "world_size": trainer.world_size}


def run_ddp(tmp_path, devices: int) -> dict:
    script = tmp_path / "evaluate_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(devices), str(out)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sync_dist" not in result.stderr, result.stderr[-2000:]
    return json.loads(out.read_text())


def assert_same(one, two, path="result"):
    if isinstance(one, dict):
        assert one.keys() == two.keys(), path
        for key in one:
            assert_same(one[key], two[key], f"{path}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), path
        for index, (a, b) in enumerate(zip(one, two)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(one, float):
        assert one == pytest.approx(two, rel=1e-5, abs=1e-7) or (math.isnan(one) and math.isnan(two)), path
    else:
        assert one == two, path


def test_two_process_ddp_evaluation_equals_one_process(tmp_path, digits_judge, judge_cache):
    single = validate_with_callback(1)
    double = run_ddp(tmp_path, 2)
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["results"]["samples"] == 64 and len(single["results"]["coherence"]) == 3
    assert set(single["results"]["quality"]) == {"text->image", "->image"}
    assert_same(single["results"], double["results"])
    # what the callback logged is what it computed, under names a dashboard groups by direction
    assert_same({k: v for k, v in single["logged"].items() if k.startswith("eval/")}, flatten(single["results"]))


def test_evaluation_is_reproducible_and_only_the_model_changes_it(digits, digits_judge):
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=digits.data_spec, latent_dim=8, width=8, text_width=16)
    model.tokenizer = digits.tokenizer
    evaluator = Evaluator(digits, {"image": digits_judge}, split="val", num_samples=48, batch_size=16,
                          directions=["text->image", "->image", "image->text"])
    first = evaluator.run(model)
    torch.manual_seed(123)  # the global random state does not matter: every chunk is seeded
    assert_same(first, evaluator.run(model))
    assert first["text"]["image->text"].keys() == {"bleu", "chrf"}
    assert first["likelihood"]["kind"] == "iwae_8" and first["likelihood"]["samples"] == 48
    assert math.isfinite(first["likelihood"]["bits_per_dim"])
    assert first["coherence_matrix"] == {"text": {"image": first["coherence"][0]["accuracy"]},
                                         "image": {"text": first["coherence"][1]["accuracy"]}}


def test_default_directions_are_the_scorable_ones(digits):
    model = MultimodalVAE(data_spec=digits.data_spec, latent_dim=4, width=8, text_width=16)
    assert default_directions(model, digits) == ["text->image", "label->image", "image->text", "label->text",
                                                 "image->label", "text->label", "->image"]


def test_too_few_chunks_for_the_processes_is_an_early_clear_error(digits, digits_judge):
    evaluator = Evaluator(digits, {"image": digits_judge}, split="val", num_samples=16, batch_size=16)
    with pytest.raises(ValueError, match="1 chunks for 2 processes; lower batch_size or raise num_samples"):
        evaluator.my_chunks(rank=0, world_size=2)


def test_callback_evaluates_every_n_epochs_while_fitting(digits, digits_judge):
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=digits.data_spec, latent_dim=4, width=8, text_width=16)
    callback = EvaluationCallback(directions=["label->image"], num_samples=32, batch_size=16, every_n_epochs=2)
    runs = []
    original = callback.on_validation_epoch_end

    def counted(trainer, pl_module):
        before = callback.results
        original(trainer, pl_module)
        if callback.results is not before:
            runs.append(trainer.current_epoch)

    callback.on_validation_epoch_end = counted
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[callback])
    trainer.fit(model, datamodule=digits)
    assert runs == [1, 3]
    assert "eval/label->image/fid_judge" in trainer.callback_metrics
    assert "eval/label->image/coherence" in trainer.callback_metrics

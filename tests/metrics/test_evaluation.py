"""The Evaluator and EvaluationCallback: one protocol, reproducible, and the same under 1 and 2 DDP processes."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from mmgen_lightning.callbacks.evaluation import EvaluationCallback
from mmgen_lightning.metrics.evaluator import Evaluator, default_directions, flatten
from mmgen_lightning.models.vae import MultimodalVAE


class RecordingEvaluation(EvaluationCallback):
    """Writes what process 0 computed, and the warnings it raised, to ``path``: under ``ddp_fork`` the
    processes are forks, so the test's own process sees neither."""

    def __init__(self, path: Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path, self._catcher, self._caught = path, None, []

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if self.path is not None:
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__()
            warnings.simplefilter("always")
        super().setup(trainer, pl_module, stage)

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            if trainer.is_global_zero:
                self.path.write_text(json.dumps({"results": self.results, "world_size": trainer.world_size,
                                                 "warnings": [str(w.message) for w in self._caught]}))


def validate_with_callback(devices: int, path: Path | None = None) -> dict:
    """``trainer.validate`` of a seeded tiny VAE with an EvaluationCallback. Two processes are forked from
    this one (``ddp_fork``: DDP with gloo, as under ``strategy="ddp"``, without a second import of
    everything) and process 0's result is read back from ``path``."""
    from mmgen_lightning.datamodules.digits import DigitsDataModule

    datamodule = DigitsDataModule(modalities=["image", "text", "label"], batch_size=32)
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=datamodule.data_spec, network={"latent_dim": 8, "width": 8, "text_width": 16})
    callback = RecordingEvaluation(path, directions=["text->image", "->image", "image->text", "label->text"],
                                   num_samples=64, batch_size=16, split="val")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=1, callbacks=[callback])
    logged = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if path is not None:
        return json.loads(path.read_text())
    return {"results": callback.results, "logged": logged, "world_size": trainer.world_size}


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
    double = validate_with_callback(2, tmp_path / "rank0.json")
    assert single["world_size"] == 1 and double["world_size"] == 2
    assert single["results"]["samples"] == 64 and len(single["results"]["coherence"]) == 3
    assert set(single["results"]["quality"]) == {"text->image", "->image"}
    assert_same(json.loads(json.dumps(single["results"])), double["results"])
    assert not [w for w in double["warnings"] if "sync_dist" in w], double["warnings"]
    # what the callback logged is what it computed, under names a dashboard groups by direction
    assert_same({k: v for k, v in single["logged"].items() if k.startswith("eval/")}, flatten(single["results"]))


def test_evaluation_is_reproducible_and_only_the_model_changes_it(digits, digits_judge):
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=digits.data_spec, network={"latent_dim": 8, "width": 8, "text_width": 16})
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
    model = MultimodalVAE(data_spec=digits.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16})
    assert default_directions(model, digits) == ["text->image", "label->image", "image->text", "label->text",
                                                 "image->label", "text->label", "->image"]


def test_too_few_chunks_for_the_processes_is_an_early_clear_error(digits, digits_judge):
    evaluator = Evaluator(digits, {"image": digits_judge}, split="val", num_samples=16, batch_size=16)
    with pytest.raises(ValueError, match="1 chunks for 2 processes; lower batch_size or raise num_samples"):
        evaluator.my_chunks(rank=0, world_size=2)


def test_callback_evaluates_every_n_epochs_while_fitting(digits, digits_judge):
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=digits.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16})
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


@pytest.mark.parametrize("max_steps, trains_judges", [(3, False), (-1, True)])
def test_judges_train_before_fitting_unless_the_run_ends_before_evaluating(digits, max_steps, trains_judges,
                                                                           monkeypatch):
    import mmgen_lightning.callbacks.evaluation as evaluation

    asked = []
    monkeypatch.setattr(evaluation, "get_judge", lambda datamodule, modality, seed=0: asked.append(modality))
    callback = EvaluationCallback(directions=["label->image"], num_samples=32, batch_size=16, every_n_epochs=2)
    model = MultimodalVAE(data_spec=digits.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16})
    digits.setup("fit")
    # what setup reads of a one-process trainer fitting with validation every epoch
    trainer = SimpleNamespace(datamodule=digits, max_steps=max_steps, val_check_interval=1.0,
                              check_val_every_n_epoch=1, global_rank=0, world_size=1, is_global_zero=True,
                              strategy=SimpleNamespace(barrier=lambda name: None))
    callback.setup(trainer, model, "fit")  # 3 steps end long before the end of epoch 2: no judge yet
    assert bool(asked) == trains_judges

"""CompileNetworks: compiled training keeps checkpoints and losses those of eager, and recompiles a bounded
number of times when caption lengths and the last batch's size vary.

Dynamo's ``eager`` backend is used here: it runs the same graph capture, guards and recompilation logic
as ``inductor`` but skips code generation, which takes minutes on a 2-core CPU (benchmarks/compile_speed.py
measures inductor)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmgen_lightning.callbacks.compile import (CompileNetworks, compile_counters, compile_networks, networks,
                                               reset_compile_counters)
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule, fit_two_ranks_in_subprocess, two_rank_config


def _fit(callbacks: list, steps: int = 6, **trainer_kwargs) -> tuple[MultimodalVAE, list[float]]:
    datamodule = ToyDataModule(["image", "text"], size=40, batch_size=16)  # 40 rows: the last batch has 8
    datamodule.setup("fit")
    torch.manual_seed(0)
    model = MultimodalVAE(data_spec=datamodule.data_spec, network={"latent_dim": 8, "width": 8, "text_width": 32})
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    L.seed_everything(0)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[*callbacks, Record()],
                        **trainer_kwargs)
    train = torch.utils.data.DataLoader(datamodule.dataset("train"), batch_size=16, shuffle=True, drop_last=False)
    trainer.fit(model, train)
    return model, losses


def test_compiled_training_matches_eager_and_keeps_checkpoint_keys():
    reset_compile_counters()
    eager_model, eager_losses = _fit([])
    compiled_model, compiled_losses = _fit([CompileNetworks(backend="eager")])
    assert set(networks(compiled_model)) == {"encoders.image", "encoders.text", "decoders.image", "decoders.text"}
    assert all(getattr(n, "_compiled_call_impl", None) is not None for n in networks(compiled_model).values())
    assert list(compiled_model.state_dict()) == list(eager_model.state_dict())  # no "_orig_mod." prefixes
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-4)
    counters = compile_counters()
    assert counters["unique_graphs"] >= 1
    # full batches of 16 and the last of 8, captions of varying length: automatic dynamic shapes
    # recompile once per network at most, not once per batch
    assert counters["recompilations"] <= len(networks(compiled_model)), counters


def test_recompilations_are_counted():
    reset_compile_counters()
    network = torch.nn.Linear(3, 2)
    compile_networks(torch.nn.ModuleDict({"net": network}), backend="eager")
    for rows in (4, 4, 5, 6, 7):  # a new batch size recompiles once, dynamic from then on
        network(torch.randn(rows, 3))
    assert compile_counters()["recompilations"] == 1
    reset_compile_counters()
    assert compile_counters()["recompilations"] == 0


def test_compiled_training_under_bf16_mixed_matches_eager():
    reset_compile_counters()
    _, eager_losses = _fit([], precision="bf16-mixed")
    _, compiled_losses = _fit([CompileNetworks(backend="eager")], precision="bf16-mixed")
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-3, atol=1e-3)


def test_compiled_training_under_two_process_ddp(tmp_path):
    config = two_rank_config(tmp_path, {"class_path": "mmgen_lightning.models.MultimodalVAE",
                                         "init_args": {"network": {"latent_dim": 4, "width": 8, "text_width": 16}}},
                             {"class_path": "tests.conftest.ToyDataModule", "init_args": {"size": 32, "batch_size": 8}})
    config["trainer"]["callbacks"].append({"class_path": "mmgen_lightning.callbacks.CompileNetworks",
                                           "init_args": {"backend": "eager"}})
    fit_two_ranks_in_subprocess(config, tmp_path)
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and not any("_orig_mod" in key for key in checkpoint["state_dict"])


def test_compile_networks_is_idempotent_and_sampling_still_works():
    reset_compile_counters()
    datamodule = ToyDataModule(["image", "text"], size=8, batch_size=4)
    model = MultimodalVAE(datamodule.data_spec, network={"latent_dim": 8, "width": 8, "text_width": 32}).eval()
    names = compile_networks(model, backend="eager")
    assert compile_networks(model, backend="eager") == names
    conditions = datamodule.tokenizer.encode(["class one"])
    torch.manual_seed(0)
    images = model.generate(conditions, num_samples=3, to="image")["image"]
    assert images.shape == (3, 1, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("bad", [{"backend": "no-such-backend"}])
def test_unknown_backend_is_named(bad):
    datamodule = ToyDataModule(["image", "text"], size=8, batch_size=4)
    model = MultimodalVAE(data_spec=datamodule.data_spec, network={"latent_dim": 8, "width": 8, "text_width": 32})
    with pytest.raises(Exception, match="no-such-backend"):
        compile_networks(model, **bad)
        model.generate(datamodule.tokenizer.encode(["class one"]), num_samples=1, to="image")

"""Faults: a NaN loss stops training with a checkpoint of the last finite state (VAE and GAN), a crash
leaves an exception checkpoint, checkpoint writes are atomic, and loading refuses arbitrary pickles."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import mmgen_lightning.checkpoint_io as checkpoint_io
from mmgen_lightning.callbacks.faults import (ExceptionCheckpoint, NonFiniteLossError, RandomStateCheckpoint,
                                              StopOnNonFiniteLoss)
from mmgen_lightning.checkpoint_io import AtomicCheckpointIO
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule

FAMILIES = {
    "vae": lambda spec: MultimodalVAE(spec, network={"latent_dim": 4, "width": 8, "text_width": 16}),
    "gan": lambda spec: ConditionalGAN(spec, condition="text",
                                       network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16}),
}


class PoisonBatch(Callback):
    """Turns the images of batch ``at`` into NaN and remembers the weights just before it."""

    def __init__(self, at: int) -> None:
        self.at, self.weights_before = at, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.at:
            self.weights_before = {k: v.clone() for k, v in pl_module.state_dict().items()}
            batch["image"].fill_(float("nan"))


class Pickled:
    """Anything that is not a tensor or a plain container needs an arbitrary pickle to load."""


class Boom(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 2:
            raise RuntimeError("disk on fire")


def trainer(tmp_path, callbacks, **options):
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     max_steps=20, limit_val_batches=0, default_root_dir=str(tmp_path), plugins=[AtomicCheckpointIO()],
                     callbacks=callbacks, **options)


@pytest.mark.parametrize("family", FAMILIES)
def test_nan_loss_stops_with_the_last_finite_state_saved(family, tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=32, batch_size=4)
    model = FAMILIES[family](datamodule.data_spec)
    poison, guard = PoisonBatch(at=3), StopOnNonFiniteLoss()
    with pytest.raises(NonFiniteLossError, match=r"training loss is not finite.*last finite state is saved in "
                                                 r".*last-finite\.ckpt.*--ckpt_path"):
        trainer(tmp_path, [poison, guard]).fit(model, datamodule=datamodule)
    assert guard.saved_path == str(tmp_path / "checkpoints" / "last-finite.ckpt")
    saved = torch.load(guard.saved_path, weights_only=True)
    assert saved["state_dict"].keys() == poison.weights_before.keys()
    for name, _ in model.named_parameters():  # buffers may move (spectral norm's power iteration)
        assert torch.equal(saved["state_dict"][name], poison.weights_before[name]), name
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    # the weights in memory never saw the NaN either, and the checkpoint rebuilds the model
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert type(load_generator(guard.saved_path)) is type(model)


def test_a_crash_leaves_an_exception_checkpoint(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=32, batch_size=4)
    model = FAMILIES["vae"](datamodule.data_spec)
    with pytest.raises(RuntimeError, match="disk on fire"):
        trainer(tmp_path, [Boom(), ExceptionCheckpoint()]).fit(model, datamodule=datamodule)
    saved = AtomicCheckpointIO().load_checkpoint(tmp_path / "checkpoints" / "on_exception.ckpt")
    assert saved["global_step"] == 2


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    real_save = torch.save

    def dies_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.zeros(3))


def test_loading_refuses_arbitrary_pickles_and_truncated_files(tmp_path, toy_datamodule):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Pickled()}, evil)
    io = AtomicCheckpointIO()
    with pytest.raises(ValueError, match=r"evil.ckpt: refusing to load this checkpoint with weights_only=True"):
        io.load_checkpoint(evil)
    with pytest.raises(ValueError, match=r"weights_only=True only"):
        io.load_checkpoint(evil, weights_only=False)
    cut = tmp_path / "cut.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, cut)
    cut.write_bytes(cut.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"cut.ckpt: refusing"):
        io.load_checkpoint(cut)
    # the same refusal when resuming a run through the Trainer
    model = FAMILIES["vae"](toy_datamodule.data_spec)
    with pytest.raises(ValueError, match=r"evil.ckpt: refusing"):
        trainer(tmp_path, []).fit(model, datamodule=toy_datamodule, ckpt_path=str(evil))


def test_a_non_finite_loss_is_reported_as_one_line_by_the_command():
    from mmgen_lightning.errors import user_error

    error = NonFiniteLossError("the training loss is not finite ([nan] on rank 0, ...); resume from it")
    assert user_error(error) == (1, "the training loss is not finite ([nan] on rank 0, ...); resume from it")


def test_random_state_is_restored_on_every_rank():
    """Each process continues its own random stream; a rank's row of the stacked states is restored as a copy
    (torch.set_rng_state given the row itself, a view at an offset, crashes the next draw)."""
    torch.manual_seed(0)
    states = [torch.get_rng_state()]
    expected = [torch.rand(3)]
    states.append(torch.get_rng_state())
    expected.append(torch.rand(3))
    for rank in (0, 1):
        callback = RandomStateCheckpoint()
        callback.on_load_checkpoint(None, None, {"random_state": {"cpu": torch.stack(states)}})
        callback.on_train_start(SimpleNamespace(world_size=2, global_rank=rank), SimpleNamespace(device=torch.device("cpu")))
        assert torch.equal(torch.rand(3), expected[rank])

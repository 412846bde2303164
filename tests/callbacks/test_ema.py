"""The EMA callback: what the other callbacks see at the end of validation, and what the checkpoint holds."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmgen_lightning.callbacks import EMA
from tests.conftest import ToyDataModule, fit
from tests.models.test_flow import tiny


class WeightsAtValidationEnd(L.Callback):
    """Records the first DiT parameter as callbacks see it at ``on_validation_epoch_end``."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.seen.append(next(pl_module.velocity.dit.parameters()).detach().clone())


def test_callbacks_after_the_ema_score_the_averaged_weights_and_training_goes_on_live(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text")
    ema, probe = EMA(decay=0.5), WeightsAtValidationEnd()
    fit(model, datamodule, max_steps=4, limit_val_batches=1, val_check_interval=2, default_root_dir=tmp_path,
        enable_checkpointing=True, callbacks=[ema, probe, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    averaged = next(p for name, p in ema._average_model.module.named_parameters() if name.startswith("velocity.dit"))
    live = torch.load(tmp_path / "last.ckpt", weights_only=True)["current_model_state"]
    first = next(name for name in live if name.startswith("velocity.dit"))
    assert len(probe.seen) == 2
    torch.testing.assert_close(probe.seen[-1], averaged.detach())  # the probe, listed after EMA, saw the average
    assert not torch.equal(live[first], averaged.detach())          # ... which differs from the live weights
    stored = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"][first]
    torch.testing.assert_close(stored, averaged.detach())            # and the checkpoint's state_dict is the average


def test_sample_grids_are_drawn_from_the_averaged_weights(tmp_path):
    """SampleLogger draws at the end of the epoch's closing validation, where the EMA weights are in."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from mmgen_lightning.callbacks import SampleLogger

    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text")
    drawn_with: list[torch.Tensor] = []
    generate = model.generate

    def recording_generate(*args, **kwargs):
        drawn_with.append(next(model.velocity.dit.parameters()).detach().clone())
        return generate(*args, **kwargs)

    model.generate = recording_generate

    class LiveWeights(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last = next(pl_module.velocity.dit.parameters()).detach().clone()

    ema, live = EMA(decay=0.5), LiveWeights()
    fit(model, datamodule, max_epochs=2, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path), callbacks=[ema, live, SampleLogger(num_samples=2, sampling={"steps": 1})])
    averaged = next(p for name, p in ema._average_model.module.named_parameters() if name.startswith("velocity.dit"))
    assert len(drawn_with) == 2  # once per epoch, not again at the epoch's end
    torch.testing.assert_close(drawn_with[-1], averaged.detach())
    assert not torch.equal(drawn_with[-1], live.last)  # the live weights of the last step differ


def test_the_fused_update_is_the_exponential_average_and_leaves_frozen_weights_alone():
    from mmgen_lightning.callbacks.ema import ema_update

    averages, currents = [torch.zeros(3), torch.zeros(2, 2), torch.zeros(4)], [torch.ones(3), torch.ones(2, 2),
                                                                               torch.ones(4)]
    ema_update(0.9, frozen={currents[2].data_ptr()})(averages, currents, torch.tensor(5))
    torch.testing.assert_close(averages[0], torch.full((3,), 0.1))
    torch.testing.assert_close(averages[1], torch.full((2, 2), 0.1))
    assert torch.equal(averages[2], torch.zeros(4))  # frozen: untouched
    warm = [torch.zeros(3)]
    ema_update(0.9, warmup=True)(warm, [torch.ones(3)], torch.tensor(0))  # second update: rate 2/11
    torch.testing.assert_close(warm[0], torch.full((3,), 9 / 11))

"""A run killed in the middle of an epoch and resumed from its last checkpoint ends with exactly the
weights of a run that never stopped (deterministic CPU), for the VAE and the GAN."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmgen_lightning.callbacks.ema import EMA
from mmgen_lightning.callbacks.faults import RandomStateCheckpoint
from mmgen_lightning.checkpoint_io import AtomicCheckpointIO
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.models.vae import MultimodalVAE
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus
from tests.resume_checks import Crash, CrashAt

# 8 train rows in batches of 2: 4 batches per epoch, 8 in two epochs; checkpoints after batches 3 and 6,
# a crash at batch 8, so the run resumes after batch 6, half-way through the second epoch. Lightning counts
# optimizer steps: one per batch for the VAE, two (discriminator, generator) for the GAN.
BATCHES, EVERY, CRASH_AT = 8, 3, 7
STEPS_PER_BATCH = {"vae": 1, "gan": 2}

FAMILIES = {
    "vae": lambda spec: MultimodalVAE(spec, network={"latent_dim": 4, "width": 8, "text_width": 16},
                                      optimization={"lr": 3e-3}),
    "gan": lambda spec: ConditionalGAN(spec, condition="text",
                                       network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16},
                                       objective={"r1_gamma": 1.0}),
}
#: the GAN samples an average of its weights (its recipes' EMA callback): a resumed run must continue that too
AVERAGING = {"gan": lambda: [EMA(decay=0.9, warmup=True, use_buffers=False)]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("resume"), 10)


def run(family, manifest, folder, callbacks=(), ckpt_path=None, random_state=True):
    """Train ``family`` for ``BATCHES`` batches (or until a callback stops it); returns the model."""
    L.seed_everything(0)
    dm = ManifestDataModule(str(manifest), modalities=["image", "text"], batch_size=2,
                            split_fractions=(0.8, 0.2, 0.0), seed=1, **DATA_OPTIONS)
    model = FAMILIES[family](dm.data_spec)
    unit = STEPS_PER_BATCH[family]
    checkpoints = ModelCheckpoint(dirpath=folder, every_n_train_steps=EVERY * unit, save_top_k=-1,
                                  filename="{step}")
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        max_steps=BATCHES * unit, limit_val_batches=0, plugins=[AtomicCheckpointIO()],
                        callbacks=[checkpoints, *([RandomStateCheckpoint()] if random_state else []),
                                   *AVERAGING.get(family, list)(), *callbacks])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_mid_epoch_equals_uninterrupted(family, manifest, tmp_path):
    straight = run(family, manifest, tmp_path / "straight")
    with pytest.raises(Crash):
        run(family, manifest, tmp_path / "crashed", callbacks=[CrashAt(CRASH_AT * STEPS_PER_BATCH[family])])
    unit = STEPS_PER_BATCH[family]
    assert {p.name for p in (tmp_path / "crashed").iterdir()} == {f"step={3 * unit}.ckpt", f"step={6 * unit}.ckpt"}
    last = tmp_path / "crashed" / f"step={6 * unit}.ckpt"
    resumed = run(family, manifest, tmp_path / "resumed", ckpt_path=str(last))
    for (name, value), expected in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)
    if family == "gan":
        assert (resumed.discriminator_steps, resumed.generator_steps) == (BATCHES, BATCHES)


def test_without_the_random_state_the_resumed_vae_differs(manifest, tmp_path):
    """The check above can fail: the VAE's reparameterisation noise must be restored too."""
    straight = run("vae", manifest, tmp_path / "straight", random_state=False)
    with pytest.raises(Crash):
        run("vae", manifest, tmp_path / "crashed", callbacks=[CrashAt(CRASH_AT)], random_state=False)
    resumed = run("vae", manifest, tmp_path / "resumed", ckpt_path=str(tmp_path / "crashed" / "step=6.ckpt"),
                  random_state=False)
    assert any(not torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))

"""A run crashed in the middle of an epoch and resumed from its last periodic checkpoint ends with exactly the
training state of a run that never stopped (deterministic CPU) for FlowMatching with its EMA callback, the
Captioner, the Aligner, the VQVAE and the TokenTransformer: live weights, EMA weights and update count, optimiser
and scheduler states, random state. The data is a base-class datamodule (as Shapes and Digits are); the VAE and
the GAN on a manifest: tests/test_resume.py."""

import pytest
import torch

from mmgen_lightning.callbacks.ema import EMA
from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.flow import FlowMatching
from mmgen_lightning.models.token_transformer import TokenTransformer
from mmgen_lightning.models.vqvae import VQVAE
from tests.conftest import ToyDataModule, fit
from tests.resume_checks import Crash, CrashAt, assert_same_state, checkpoints_in, fit_steps

# 16 train rows in batches of 4: 4 batches per epoch, 8 in two epochs; checkpoints after steps 3 and 6, a crash
# before step 8, so the run resumes after step 6, half-way through the second epoch
STEPS, EVERY, CRASH_AT = 8, 3, 7

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_data() -> ToyDataModule:
    return ToyDataModule(modalities=["image", "text"], size=16, batch_size=4)


@pytest.fixture(scope="module")
def vqvae_path(tmp_path_factory) -> str:
    """A stage-1 checkpoint of a tiny VQVAE for the TokenTransformer (untrained: only its codes are needed)."""
    torch.manual_seed(0)
    vqvae = VQVAE(toy_data().data_spec, network={"num_codes": 16, "code_dim": 8, "width": 16})
    trainer = fit(vqvae, toy_data(), max_steps=1, limit_val_batches=0)
    path = tmp_path_factory.mktemp("stage1") / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


FAMILIES = {  # flow: cond_drop, time and noise draws; captioner, tokens: dropout; vqvae: dead codes restart at
    # random encoder outputs (64 codes for 64 vectors a batch); all from the torch RNG
    "flow": lambda spec, stage1: FlowMatching(spec, network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 4},
                                              objective={"cond_drop": 0.2}, optimization={"warmup_steps": 2}),
    "captioner": lambda spec, stage1: Captioner(spec, network={"width": 32, "encoder_layers": 1, "decoder_layers": 1,
                                                               "dropout": 0.1}, optimization={"warmup_steps": 2}),
    "aligner": lambda spec, stage1: Aligner(spec, network={"embed_dim": 16, "width": 32, "encoder_layers": 1,
                                                           "text_layers": 1, "num_heads": 2},
                                            optimization={"warmup_steps": 2}),
    "vqvae": lambda spec, stage1: VQVAE(spec, network={"num_codes": 64, "code_dim": 8, "width": 16}),
    "tokens": lambda spec, stage1: TokenTransformer(spec, vqvae_checkpoint=stage1,
                                                    network={"width": 32, "num_layers": 1, "num_heads": 2,
                                                             "dropout": 0.1},
                                                    objective={"condition_dropout": 0.2},
                                                    optimization={"warmup_steps": 2}),
}
#: the flow recipes sample from an EMA that starts after a warm-up: the average, its count and its start must resume
AVERAGING = {"flow": lambda: [EMA(decay=0.9, update_starting_at_step=2)]}


@pytest.mark.parametrize("name", FAMILIES)
def test_resumed_mid_epoch_equals_uninterrupted(name, vqvae_path, tmp_path):
    def build():
        data = toy_data()
        return FAMILIES[name](data.data_spec, vqvae_path), data

    callbacks = AVERAGING.get(name, list)
    straight = fit_steps(build, tmp_path / "straight", STEPS, EVERY, callbacks())
    with pytest.raises(Crash, match=f"killed at step {CRASH_AT}"):
        fit_steps(build, tmp_path / "crashed", STEPS, EVERY, [*callbacks(), CrashAt(CRASH_AT)])
    assert checkpoints_in(tmp_path / "crashed") == {"step=3.ckpt", "step=6.ckpt"}
    resumed = fit_steps(build, tmp_path / "resumed", STEPS, EVERY, callbacks(),
                        ckpt_path=str(tmp_path / "crashed" / "step=6.ckpt"))
    compared = assert_same_state(resumed, straight)
    assert {"state_dict", "optimizer_states", "random_state"} <= set(compared)
    state = torch.load(straight, weights_only=True)
    if name == "flow":  # the EMA's average and count were compared: 6 updates, from step 2 on
        assert {"current_model_state", "averaging_state"} <= set(compared)
        assert int(state["averaging_state"]["n_averaged"]) == STEPS - 2
    if name == "vqvae":  # random restarts happened, after the resumption too
        assert int(state["state_dict"]["quantizer.restarts"]) > int(
            torch.load(tmp_path / "crashed" / "step=6.ckpt", weights_only=True)["state_dict"]["quantizer.restarts"])

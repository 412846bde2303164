"""Checkpoints written before the option groups (the flat keywords, tests/fixtures/legacy) still load,
and draw what they drew then (each family's LegacyLayout maps their options and state_dict keys)."""

from pathlib import Path

import pytest
import torch

from mmgen_lightning.models.base import CHECKPOINT_FORMAT, CHECKPOINT_KEY, load_generator, upgrade_checkpoint

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
GENERATORS = ["flow", "vae", "gan", "captioner", "vqvae", "tokens"]


@pytest.mark.parametrize("name", GENERATORS)
def test_an_old_checkpoint_draws_what_it_drew(name):
    model = load_generator(LEGACY / f"{name}.ckpt")
    expected = torch.load(LEGACY / f"{name}.expected.pt", weights_only=True)
    torch.manual_seed(0)
    out = model.generate(expected["conditions"], num_samples=2, to=expected["to"], **expected["sampling"])
    for key, value in expected["outputs"].items():
        assert torch.allclose(out[key].float(), value.float(), atol=1e-5), f"{name}: {key} differs"


def test_an_old_aligner_embeds_as_it_did():
    model = load_generator(LEGACY / "aligner.ckpt")
    expected = torch.load(LEGACY / "aligner.expected.pt", weights_only=True)
    flow = torch.load(LEGACY / "flow.expected.pt", weights_only=True)
    with torch.no_grad():
        assert torch.allclose(model.embed(flow["conditions"], "text"), expected["text"], atol=1e-5)


@pytest.mark.parametrize("name", GENERATORS + ["aligner"])
def test_the_upgrade_is_marked_and_idempotent(name):
    checkpoint = torch.load(LEGACY / f"{name}.ckpt", weights_only=True)
    family = type(load_generator(LEGACY / f"{name}.ckpt"))
    assert "format" not in checkpoint[CHECKPOINT_KEY]
    once = upgrade_checkpoint(family, checkpoint)
    assert once[CHECKPOINT_KEY]["format"] == CHECKPOINT_FORMAT
    hparams, keys = dict(once["hyper_parameters"]), set(once["state_dict"])
    twice = upgrade_checkpoint(family, once)
    assert dict(twice["hyper_parameters"]) == hparams and set(twice["state_dict"]) == keys

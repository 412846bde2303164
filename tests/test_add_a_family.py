"""Adding a family: ``tests/families/gaussian.py``, written outside the package in under 150 lines from the shared
pieces, trains to its closed-form optimum, samples through ``generate``, saves and reloads with its options."""

from pathlib import Path

import pytest
import torch

from mmgen_lightning.models.base import GenerativeModule
from tests.conftest import ToyDataModule, fit
from tests.families.gaussian import GaussianImage, GaussianNetwork

FAMILY = Path(__file__).resolve().parent / "families" / "gaussian.py"


def class_statistics(datamodule: ToyDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the pixel-wise mean and standard deviation of the training images: ``4,C,H,W`` each, the
    maximum-likelihood Gaussian the family should learn."""
    items = list(datamodule.dataset("train"))
    images = torch.stack([item["image"] for item in items])
    labels = torch.stack([item["attributes"][0] for item in items])
    groups = [images[labels == k] for k in range(4)]
    return torch.stack([g.mean(0) for g in groups]), torch.stack([g.std(0, unbiased=False) for g in groups])


def test_the_family_fits_in_one_short_file():
    assert len(FAMILY.read_text().splitlines()) < 150


# a label is one table row per class; a caption goes through a small transformer, which wants a lower rate
@pytest.mark.parametrize(("condition", "lr", "epochs"), [("label", 3e-2, 15), ("text", 3e-3, 45)])
def test_a_new_family_trains_to_its_optimum_samples_saves_and_reloads(tmp_path, condition, lr, epochs):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", condition], size=128)
    datamodule.setup("fit")
    mean, std = class_statistics(datamodule)
    model = GaussianImage(datamodule.data_spec, condition=condition, network={"width": 16}, optimization={"lr": lr})
    assert model.config.network.width == 16 and model.config.optimization.lr == lr
    keys = ("label",) if condition == "label" else ("text", "text_mask")
    items = [next(item for item in datamodule.dataset("train") if item["attributes"][0] == k) for k in range(4)]
    conditions = {key: torch.stack([item[key] for item in items]) for key in keys}  # row k: class k's label or caption

    before = (model.generate(conditions, 4, noise_scale=0.0)["image"] - mean).abs().mean()
    trainer = fit(model, datamodule, max_epochs=epochs, enable_checkpointing=True, default_root_dir=tmp_path)
    learned = model.generate(conditions, 4, noise_scale=0.0)["image"]
    after = (learned - mean).abs().mean()
    assert after < 0.05 < before  # the class means, pixel by pixel
    _, log_scale = model.network(conditions)
    scale = log_scale.exp().mean((1, 2, 3))
    assert torch.allclose(scale, std.clamp_min(0.01).mean((1, 2, 3)), rtol=0.5)  # and their spread
    assert trainer.callback_metrics["val/loss"] < trainer.callback_metrics["train/loss"] + 0.5  # held-out images too

    # generate(): the seed fixes the noise, the recipe's noise_scale is the default, a bad knob names itself
    drawn = model.generate(conditions, 4, seed=3)["image"]
    assert torch.equal(drawn, model.generate(conditions, 4, seed=3)["image"]) and not torch.equal(drawn, learned)
    with pytest.raises(ValueError, match="noise_scale"):
        model.generate(conditions, 4, noise_scale=-1.0)
    with pytest.raises(ValueError, match="cannot generate"):
        model.generate(conditions, 4, to="audio")

    # saved by Lightning, reloaded by Lightning (load_generator loads only the package's own families)
    path = tmp_path / "gaussian.ckpt"
    trainer.save_checkpoint(path)
    loaded = GaussianImage.load_from_checkpoint(path, weights_only=True)
    assert isinstance(loaded, GenerativeModule) and loaded.config == model.config
    assert loaded.tokenizer.to_json() == datamodule.tokenizer.to_json()  # the base class's checkpoint extras
    assert torch.equal(loaded.generate(conditions, 4, seed=3)["image"], drawn)


def test_its_options_are_checked_when_built():
    spec = ToyDataModule(modalities=["image", "label"]).data_spec
    with pytest.raises(ValueError, match=r"network\.width must be >= 1, got 0"):
        GaussianImage(spec, network={"width": 0})
    with pytest.raises(ValueError, match="unknown option.*depth; allowed: width"):
        GaussianImage(spec, network={"depth": 2})
    with pytest.raises(ValueError, match=r"sampling\.noise_scale must be >= 0"):
        GaussianImage(spec, sampling={"noise_scale": -1})
    with pytest.raises(ValueError, match="condition: unknown 'audio'; allowed: label, text"):
        GaussianImage(spec, condition="audio")
    assert GaussianImage(spec, network=GaussianNetwork(width=8)).config.network.width == 8

"""VQVAE: usage/perplexity in closed form, code shapes, a tiny learning run, checkpoints (its quantizers:
tests/models/layers/test_quantizers.py)."""

import pytest
import torch

from mmgen_lightning.losses import codebook_perplexity
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vqvae import VQVAE, CodeHistogram
from tests.conftest import ToyDataModule, fit

IMAGE_SPEC = {"dataset": "toy", "modalities": ["image", "audio"], "image_size": 16, "image_channels": 1,
              "sample_rate": 8000, "audio_length": 2000}


def tiny(spec=IMAGE_SPEC, **kwargs) -> VQVAE:
    return VQVAE(spec, **{"num_codes": 16, "code_dim": 8, "width": 16, "n_mels": 16, "audio_frames": 8, **kwargs})



def test_perplexity_and_usage_in_closed_form():
    assert codebook_perplexity(torch.tensor([5, 5, 5, 5])).item() == pytest.approx(4.0)
    assert codebook_perplexity(torch.tensor([7, 0, 0, 0])).item() == pytest.approx(1.0)
    histogram = CodeHistogram(8)
    histogram.update(torch.tensor([[0, 1], [1, 3]]))
    scores = histogram.compute()
    assert scores["usage"].item() == pytest.approx(3 / 8)
    p = torch.tensor([0.25, 0.5, 0.25])
    assert scores["perplexity"].item() == pytest.approx(torch.exp(-(p * p.log()).sum()).item(), rel=1e-5)


# --- the family -------------------------------------------------------------------------------------
def test_image_and_audio_codes_round_trip_shapes():
    image = tiny().eval()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    codes = image.encode_codes({"image": x})
    assert codes.shape == (3, image.num_tokens) and image.grid == (4, 4)
    assert image.decode_codes(codes).shape == x.shape
    assert image.generate({"image": x}, 3)["image"].shape == x.shape
    audio = tiny(modality="audio", quantizer="fsq", fsq_levels=[4, 4]).eval()
    clip = torch.rand(2, 2000) * 2 - 1
    codes = audio.encode_codes({"audio": clip})
    assert audio.grid[0] == 1 and codes.shape == (2, audio.num_tokens) and codes.max() < 16
    assert audio.decode_codes(codes).shape == clip.shape


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="quantizer"):
        tiny(quantizer="kmeans")
    with pytest.raises(ValueError, match="modality"):
        tiny(modality="video")
    with pytest.raises(ValueError, match="downsample"):
        tiny(downsample=3)
    with pytest.raises(ValueError, match="image -> text|cannot generate"):
        tiny().generate({"image": torch.zeros(1, 1, 16, 16)}, 1, to="text")


def test_learns_to_reconstruct_uses_its_codebook_and_reloads(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=64)
    model = tiny(datamodule.data_spec, lr=3e-3)
    images = torch.stack([datamodule.dataset("val")[i]["image"] for i in range(16)])
    before = ((model.eval().generate({"image": images}, 16)["image"] - images) ** 2).mean()
    trainer = fit(model, datamodule, max_epochs=8, enable_checkpointing=True, default_root_dir=tmp_path)
    after = ((model.eval().generate({"image": images}, 16)["image"] - images) ** 2).mean()
    assert after < 0.5 * before
    # four noisy toy images need only a few codes; more than one must be in use
    assert trainer.callback_metrics["val/codebook_usage"] >= 2 / 16
    assert trainer.callback_metrics["val/perplexity"] > 1.5
    path = tmp_path / "vq.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_generator(path)
    assert torch.equal(loaded.encode_codes({"image": images}), model.encode_codes({"image": images}))
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)

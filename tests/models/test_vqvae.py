"""VQVAE: usage/perplexity in closed form, its objective by hand, code shapes, its option groups, a tiny
learning run, checkpoints (its quantizers: tests/models/layers/test_quantizers.py)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmgen_lightning.losses import codebook_perplexity
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vqvae import VQVAE, CodeHistogram
from mmgen_lightning.objectives.vqvae import vqvae_objective
from tests.conftest import ToyDataModule, fit

IMAGE_SPEC = {"dataset": "toy", "modalities": ["image", "audio"], "image_size": 16, "image_channels": 1,
              "sample_rate": 8000, "audio_length": 2000}
LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"


def tiny(spec=IMAGE_SPEC, modality=None, network: dict | None = None, **kwargs) -> VQVAE:
    """A tiny VQVAE; ``network`` entries are laid over the tiny sizes."""
    sizes = {"num_codes": 16, "code_dim": 8, "width": 16, "n_mels": 16, "audio_frames": 8}
    return VQVAE(spec, modality=modality, network={**sizes, **(network or {})}, **kwargs)

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
    audio = tiny(modality="audio", network={"quantizer": "fsq", "fsq_levels": [4, 4]}).eval()
    clip = torch.rand(2, 2000) * 2 - 1
    codes = audio.encode_codes({"audio": clip})
    assert audio.grid[0] == 1 and codes.shape == (2, audio.num_tokens) and codes.max() < 16
    assert audio.decode_codes(codes).shape == clip.shape


def test_the_objective_is_reconstruction_plus_weighted_commitment():
    model = tiny(objective={"commitment_weight": 0.5}).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    out = vqvae_objective(model.encoder, model.quantizer, model.decoder, x, model.config.objective)
    z = model.encoder(x)
    codes = model.quantizer.nearest(z.movedim(1, -1).reshape(-1, z.shape[1])).view(2, 4, 4)
    q = model.quantizer.lookup(codes)
    recon = F.mse_loss(model.decoder(q), x)
    assert torch.equal(out["codes"], codes)
    assert torch.allclose(out["recon_loss"], recon) and torch.allclose(out["commitment"], F.mse_loss(z, q))
    assert torch.allclose(out["loss"], recon + 0.5 * F.mse_loss(z, q))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"^network.quantizer must be one of vq, fsq, got 'kmeans'$"):
        tiny(network={"quantizer": "kmeans"})
    with pytest.raises(ValueError, match="modality"):
        tiny(modality="video")
    with pytest.raises(ValueError, match=r"^network.downsample must be a power of two >= 2, got 3$"):
        tiny(network={"downsample": 3})
    with pytest.raises(ValueError, match=r"^network.downsample: 32 does not divide image_size 16$"):
        tiny(network={"downsample": 32})
    with pytest.raises(ValueError, match=r"^network.width must be a multiple of 8, got 12$"):
        tiny(network={"width": 12})
    with pytest.raises(ValueError, match=r"^objective.ema_decay must be in \(0, 1\), got 1.0$"):
        tiny(objective={"ema_decay": 1.0})
    with pytest.raises(ValueError, match=r"^objective: unknown option\(s\) beta; allowed: commitment_weight"):
        tiny(objective={"beta": 0.25})
    with pytest.raises(ValueError, match="image -> text|cannot generate"):
        tiny().generate({"image": torch.zeros(1, 1, 16, 16)}, 1, to="text")


def test_learns_to_reconstruct_uses_its_codebook_and_reloads(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=64)
    model = tiny(datamodule.data_spec, optimization={"lr": 3e-3})
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


def test_trains_with_adamw_decaying_every_parameter():
    optimizer = tiny(optimization={"lr": 3e-3}).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1  # torch's AdamW defaults
    assert optimizer.param_groups[0]["weight_decay"] == 0.01 and optimizer.param_groups[0]["lr"] == 3e-3


def test_the_flat_hyper_parameters_an_old_stage_2_checkpoint_carries_rebuild_it():
    old = torch.load(LEGACY / "vqvae.ckpt", weights_only=True)
    flat = old["hyper_parameters"]  # what an old TokenTransformer or latent FlowMatching holds as vqvae_config
    rebuilt = VQVAE(**VQVAE.legacy.hyperparameters(VQVAE, flat))
    assert rebuilt.config.network.num_codes == flat["num_codes"] and rebuilt.config.optimization.lr == flat["lr"]
    rebuilt.load_state_dict(old["state_dict"], strict=False)
    image = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.equal(rebuilt.eval().encode_codes({"image": image}),
                       load_generator(LEGACY / "vqvae.ckpt").encode_codes({"image": image}))


def test_predict_reconstructs_the_batch():
    model = tiny().eval()
    batch = {"image": torch.rand(3, 1, 16, 16) * 2 - 1}
    assert torch.equal(model.predict_step(batch, 0)["image"], model.generate(batch, 3)["image"])

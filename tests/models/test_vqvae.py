"""VQVAE and its quantizers: straight-through gradients, the EMA update against hand-computed numbers,
dead-code restarts, FSQ codes, usage/perplexity in closed form, a tiny learning run, checkpoints."""

import pytest
import torch

from mmgen_lightning.losses import codebook_perplexity, commitment_loss
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.layers.quantizers import FiniteScalarQuantizer, VectorQuantizer
from mmgen_lightning.models.vqvae import VQVAE, CodeHistogram
from tests.conftest import ToyDataModule, fit

IMAGE_SPEC = {"dataset": "toy", "modalities": ["image", "audio"], "image_size": 16, "image_channels": 1,
              "sample_rate": 8000, "audio_length": 2000}


def tiny(spec=IMAGE_SPEC, **kwargs) -> VQVAE:
    return VQVAE(spec, **{"num_codes": 16, "code_dim": 8, "width": 16, "n_mels": 16, "audio_frames": 8, **kwargs})



def toy_quantizer(codebook, decay=0.5, threshold=0.0) -> VectorQuantizer:
    quantizer = VectorQuantizer(len(codebook), len(codebook[0]), decay=decay, eps=0.0, dead_code_threshold=threshold)
    quantizer.codebook.copy_(torch.tensor(codebook))
    quantizer.embed_sum.copy_(torch.tensor(codebook))
    quantizer.initialized.fill_(True)
    return quantizer


# --- quantizers -----------------------------------------------------------------------------------
def test_vq_straight_through_gradient_is_identity_and_values_are_codes():
    quantizer = VectorQuantizer(8, 4).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z)
    assert torch.allclose(out.quantized, quantizer.lookup(out.codes))
    weights = torch.randn_like(z)
    (out.quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # d quantized / d z = I
    assert out.codes.shape == (2, 3, 3) and out.codes.dtype == torch.long


def test_vq_picks_the_nearest_code_and_commitment_is_the_squared_distance():
    quantizer = toy_quantizer([[0.0], [10.0]]).eval()
    z = torch.tensor([[[1.0, 6.0, 4.0]]])  # B=1, D=1, grid 3
    out = quantizer(z)
    assert out.codes.tolist() == [[0, 1, 0]]
    assert torch.isclose(out.commitment, torch.tensor((1 + 16 + 16) / 3))
    assert torch.isclose(commitment_loss(z, out.quantized), out.commitment)


def test_ema_update_matches_the_hand_computed_step():
    quantizer = toy_quantizer([[0.0], [10.0]], decay=0.5)
    quantizer.update(torch.tensor([[1.0], [2.0], [9.0]]))
    # counts [2, 1], sums [3, 9]: N = .5*[1,1] + .5*[2,1] = [1.5, 1]; m = .5*[0,10] + .5*[3,9] = [1.5, 9.5]
    assert torch.allclose(quantizer.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(quantizer.embed_sum, torch.tensor([[1.5], [9.5]]))
    assert torch.allclose(quantizer.codebook, torch.tensor([[1.0], [9.5]]))


def test_laplace_smoothing_keeps_an_unused_code_finite():
    quantizer = VectorQuantizer(2, 1, decay=0.5, eps=1e-5, dead_code_threshold=0.0)
    quantizer.initialized.fill_(True)
    quantizer.cluster_size.zero_()
    quantizer.embed_sum.zero_()
    quantizer.update(torch.tensor([[1.0], [1.0]]))
    assert torch.isfinite(quantizer.codebook).all()


def test_training_mode_updates_the_codebook_and_eval_mode_does_not():
    quantizer = toy_quantizer([[0.0], [10.0]], decay=0.5)
    z = torch.tensor([[[2.0, 8.0]]])
    quantizer.eval()(z)
    assert quantizer.codebook.tolist() == [[0.0], [10.0]]
    quantizer.train()(z)
    assert quantizer.codebook.tolist() != [[0.0], [10.0]]


def test_first_training_batch_initialises_the_codebook_from_the_data():
    quantizer = VectorQuantizer(4, 2, dead_code_threshold=0.0).train()
    flat = torch.randn(32, 2) + 100.0
    quantizer(flat.T.reshape(1, 2, 32))
    assert bool(quantizer.initialized)
    assert (quantizer.codebook - 100.0).abs().max() < 10  # near the data, far from the N(0, 1) start


def test_dead_codes_are_restarted_at_encoder_outputs():
    quantizer = toy_quantizer([[0.0], [1000.0], [5.0]], decay=0.5, threshold=0.9)
    inputs = torch.tensor([[0.5], [4.0], [6.0], [-0.5]])
    quantizer.update(inputs)
    # code 1 got nothing: its count fell to 0.5 < 0.9, so it now sits on one of the inputs
    assert any(torch.equal(quantizer.codebook[1], row) for row in inputs)
    assert int(quantizer.restarts) == 1
    assert quantizer.cluster_size[1] == pytest.approx(0.9)
    assert quantizer.codebook[0].item() == pytest.approx(0.0) and quantizer.codebook[2].item() == pytest.approx(5.0)


def test_restarts_can_be_turned_off():
    quantizer = toy_quantizer([[0.0], [1000.0]], decay=0.5, threshold=0.0)
    quantizer.update(torch.tensor([[0.5], [-0.5]]))
    assert quantizer.codebook[1].item() == pytest.approx(1000.0) and int(quantizer.restarts) == 0


def test_fsq_codes_cover_the_grid_and_lookup_inverts_them():
    quantizer = FiniteScalarQuantizer([3, 4])
    assert quantizer.num_codes == 12 and quantizer.dim == 2
    values = torch.linspace(-4, 4, 41)
    z = torch.stack(torch.meshgrid(values, values, indexing="ij")).reshape(1, 2, -1)
    out = quantizer(z)
    assert sorted(out.codes.unique().tolist()) == list(range(12))
    assert torch.allclose(quantizer.lookup(out.codes), out.quantized)
    assert out.quantized.abs().max() <= 1.0 and out.commitment == 0


def test_fsq_gradient_passes_straight_through_the_rounding():
    quantizer = FiniteScalarQuantizer([5, 8])
    z = torch.randn(3, 2, 4, requires_grad=True)
    quantizer(z).quantized.sum().backward()
    reference = z.detach().clone().requires_grad_(True)
    bounded = quantizer.bound(reference.movedim(1, -1)) / (quantizer.levels // 2).float()
    bounded.sum().backward()
    assert torch.allclose(z.grad, reference.grad)


def test_fsq_rejects_bad_levels():
    with pytest.raises(ValueError, match="fsq_levels"):
        FiniteScalarQuantizer([4, 1])


# --- usage metrics ----------------------------------------------------------------------------------
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

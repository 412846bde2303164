"""VectorQuantizer and FiniteScalarQuantizer: straight-through gradients, the EMA update against
hand-computed numbers, dead-code restarts, FSQ codes."""

import pytest
import torch

from mmgen_lightning.losses import commitment_loss
from mmgen_lightning.models.layers.quantizers import FiniteScalarQuantizer, VectorQuantizer


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

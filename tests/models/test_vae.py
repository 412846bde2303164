"""MultimodalVAE: every fusion trains, the IWAE bound behaves, cross-modal generation learns, private
latents (MMVAE+) vary the samples of one condition, and the same code runs under bf16-mixed and 2-process DDP."""

import math

import lightning as L
import pytest
import torch

from mmgen_lightning.errors import UsageError
from mmgen_lightning.knobs import sampling_knobs
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule, fit_two_ranks_in_subprocess, two_rank_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class VariedToyDataModule(ToyDataModule):
    """The toy with a within-class factor no caption states: each square's brightness is drawn uniformly,
    so the images of one class differ as real digits of one class do."""

    def build_split(self, split):
        items = super().build_split(split)
        generator = torch.Generator().manual_seed(("train", "val", "test").index(split))
        for item in items.items:
            ink = 0.2 + 0.8 * torch.rand((), generator=generator)
            item["image"] = ((item["image"] + 1) * ink - 1).clamp(-1, 1)
        return items


def fit(model, datamodule, **trainer_kwargs):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("fusion, private_dim", [("poe", 0), ("moe", 0), ("mopoe", 0), ("mmvae_plus", 2),
                                                  ("poe", 2), ("mopoe", {"image": 2, "label": 1})])
def test_every_fusion_lowers_its_loss(fusion, private_dim):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text", "label"], size=32)
    model = MultimodalVAE(datamodule.data_spec, fusion=fusion, private_dim=private_dim, cross_samples=2, latent_dim=4,
                          width=8, text_width=16, lr=3e-3)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    before = model.elbo_terms(batch, 1.0)["loss"].item()
    fit(model, datamodule, max_steps=40, limit_val_batches=0)
    after = model.elbo_terms(batch, 1.0)["loss"].item()
    assert after < before - 0.3 * abs(before), (before, after)


@pytest.fixture(scope="module")
def trained_toys():
    """MoPoE with a shared latent only, and with a private image latent (8 draws of it from ``r`` in each
    reconstruction of the image from the caption alone), trained alike on the varied toy."""
    datamodule = VariedToyDataModule(modalities=["image", "text"], size=128)
    models = {}
    threads = torch.get_num_threads()  # a module fixture runs before the function-scoped one_thread
    torch.set_num_threads(1)
    try:
        for name, private_dim in (("shared", 0), ("private", {"image": 2})):
            torch.manual_seed(0)
            model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", private_dim=private_dim, cross_samples=8,
                                  latent_dim=8, width=8, text_width=32, lr=3e-3)
            fit(model, datamodule, max_epochs=12, limit_val_batches=0)
            models[name] = model.eval()
    finally:
        torch.set_num_threads(threads)
    return models, datamodule


@pytest.fixture(params=["shared", "private"])
def trained_toy_vae(request, trained_toys):
    models, datamodule = trained_toys
    return models[request.param], datamodule


def test_iwae_bound_is_above_elbo_and_grows_with_k(trained_toy_vae):
    model, datamodule = trained_toy_vae
    batch = next(iter(torch.utils.data.DataLoader(datamodule.dataset("val"), batch_size=32)))
    torch.manual_seed(0)
    with torch.no_grad():
        log_w = model.log_importance_weights(batch, 256)  # K,B
    elbo = log_w.mean().item()
    # average the K-sample bound over the 256 / K independent groups
    bounds = [(torch.logsumexp(log_w.view(256 // k, k, -1), 1) - math.log(k)).mean().item() for k in (1, 4, 32)]
    assert math.isclose(bounds[0], elbo, rel_tol=1e-6)
    assert elbo <= bounds[1] <= bounds[2], (elbo, bounds)
    assert bounds[2] - elbo > 1e-3
    # the log_likelihood contract returns the same bound, and scores every pixel, token and label
    torch.manual_seed(1)
    result = model.log_likelihood(batch, iwae_samples=32)
    assert result.name == "iwae_32" and result.log_prob.shape == (32,) and result.log_prob.dtype == torch.float64
    assert abs(result.log_prob.mean().item() - bounds[2]) < 0.05 * abs(bounds[2]) + 1.0
    assert (result.dims > 0).all()


def test_toy_cross_modal_generation_is_learned(trained_toy_vae):
    model, datamodule = trained_toy_vae
    words = ["zero", "one", "two", "three"]
    captions = [f"class {w}" for w in words]
    torch.manual_seed(0)
    images = model.generate(model.tokenizer.encode(captions), num_samples=4, to="image", truncation=0.0)["image"]
    # class k lights quadrant k: the brightest quadrant of each generated image names its class
    quadrants = torch.stack([images[:, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].mean((1, 2))
                             for r in range(2) for c in range(2)], dim=1)
    assert quadrants.argmax(1).tolist() == [0, 1, 2, 3]
    val = datamodule.dataset("val")
    images = torch.stack([val[i]["image"] for i in range(8)])
    texts = model.tokenizer.decode(model.generate({"image": images}, 8, to="text", truncation=0.0)["text"])
    assert texts == [captions[i % 4] for i in range(8)]


def test_bf16_mixed_precision_trains():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text", "audio"], size=32)
    model = MultimodalVAE(datamodule.data_spec, latent_dim=4, width=8, text_width=16, n_mels=16)
    trainer = fit(model, datamodule, max_steps=3, precision="bf16-mixed", limit_val_batches=1, log_every_n_steps=1)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert math.isfinite(trainer.callback_metrics["val/elbo"].item())


def test_log_mel_is_computed_once_per_step():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "audio"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="poe", latent_dim=4, width=8, n_mels=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    calls = []
    model.log_mel.register_forward_hook(lambda module, inputs, output: calls.append(output))
    torch.manual_seed(1)
    loss = model.elbo_terms(batch, 1.0)["loss"]
    assert len(calls) == 1
    # the same objective as feeding the encoder and the likelihood their own log-mel
    torch.manual_seed(1)
    experts = model.encode(batch, model.modalities)
    assert len(calls) == 2
    torch.manual_seed(1)
    assert torch.allclose(model.elbo_terms({**batch, "log_mel": calls[0]}, 1.0)["loss"], loss)
    assert len(calls) == 2
    assert torch.equal(experts["audio"][0], model.encode({**batch, "log_mel": calls[0]}, ["audio"])["audio"][0])


@pytest.mark.parametrize("fusion", ["poe", "mopoe"])
def test_text_padding_beyond_the_longest_caption_changes_nothing_but_the_cost(fusion):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion=fusion, latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    longest = int(batch["text_mask"].sum(1).max())
    assert longest < batch["text"].shape[1]  # the toy captions leave padding columns that no caption uses
    padded, batch = batch, {**batch, "text": batch["text"][:, :longest], "text_mask": batch["text_mask"][:, :longest]}
    decoded_lengths = []
    model.decoders["text"].gru.register_forward_hook(
        lambda module, inputs, output: decoded_lengths.append(inputs[0].shape[1]))  # teacher-forced: L - 1 steps
    results = []
    for inputs in (batch, padded):
        torch.manual_seed(1)
        results.append(model.elbo_terms(inputs, 1.0)["loss"])
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert decoded_lengths == [longest - 1, longest - 1]
    with torch.no_grad():
        experts = [model.encode(inputs, ["text"])["text"][0] for inputs in (batch, padded)]
    assert torch.allclose(*experts, atol=1e-5)


def test_training_metrics_are_made_only_on_logging_steps(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=32, batch_size=4)
    model = MultimodalVAE(datamodule.data_spec, latent_dim=4, width=8, text_width=16)
    logged_at = []
    log = model.log
    model.log = lambda name, *args, **kwargs: (logged_at.append((name, model.trainer.global_step)),
                                               log(name, *args, **kwargs))[1]
    trainer = fit(model, datamodule, max_steps=6, log_every_n_steps=3, limit_val_batches=0)
    assert sorted({step for name, step in logged_at if name == "train/loss"}) == [2, 5]
    assert {"train/kl", "train/nll_image", "train/nll_text"} <= {name for name, _ in logged_at}
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_training_step_runs_by_hand_outside_a_trainer():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    loss = model.training_step(next(iter(datamodule.train_dataloader())), 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())


def test_ddp_two_cpu_processes(tmp_path):
    config = two_rank_config(tmp_path, {"class_path": "mmgen_lightning.models.MultimodalVAE",
                                         "init_args": {"latent_dim": 4, "width": 8, "text_width": 16}},
                             {"class_path": "tests.conftest.ToyDataModule", "init_args": {"size": 32, "batch_size": 8}})
    fit_two_ranks_in_subprocess(config, tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def class_spread(images):
    """Mean pairwise L2 distance between images ``N,C,H,W``."""
    flat = images.flatten(1)
    return torch.pdist(flat).mean().item()


def test_private_latents_vary_the_samples_of_one_condition(trained_toys):
    models, _ = trained_toys
    caption = models["shared"].tokenizer.encode(["class two"])
    spreads = {}
    for name, model in models.items():
        torch.manual_seed(0)
        images = model.generate(caption, num_samples=64, to="image")["image"]
        quadrant = images[:, 0, 8:, :8].mean((1, 2)) - images[:, 0, :8, :].mean((1, 2))
        assert (quadrant > 0).float().mean() > 0.9, name  # still the asked class
        spreads[name] = class_spread(images)
    # the real squares of one class differ in brightness; the private latent carries it to the samples
    assert spreads["private"] > 1.5 * spreads["shared"], spreads


def test_cross_modal_sampling_draws_the_targets_private_latent_from_the_auxiliary_prior():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="mmvae_plus", private_dim=3, private_prior_scale=4.0,
                          latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    codes = []
    model.decoders["image"].register_forward_pre_hook(lambda module, inputs: codes.append(inputs[0]))
    count = 512
    model.generate({"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}, count, to="image")
    model.generate({}, count, to="image")
    model.generate({"image": batch["image"][:1]}, count, to="image", truncation=0.0)
    cross, unconditional, reconstruction = (code[:, 4:] for code in codes)
    assert all(code.shape == (count, 7) for code in codes)
    assert abs(cross.std().item() - 4.0) < 0.4  # r(w) = N(0, 4^2 I)
    assert abs(unconditional.std().item() - 1.0) < 0.1  # p(w) = N(0, I)
    _, privates = model.encode_with_private({"image": batch["image"][:1]}, ["image"])
    assert torch.allclose(reconstruction, privates["image"][0].expand(count, -1))  # the posterior mean


def test_private_scale_knob_scales_only_the_cross_modal_prior_draws():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", private_dim=3, private_prior_scale=2.0,
                          private_sample_scale=1.5, latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    codes = []
    model.decoders["image"].register_forward_pre_hook(lambda module, inputs: codes.append(inputs[0][:, 4:]))
    caption, count = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}, 512
    model.generate(caption, count, to="image")  # the recipe's default: c = private_sample_scale
    model.generate(caption, count, to="image", private_scale=0.5)
    model.generate(caption, count, to="image", private_scale=0.0)
    model.generate({"image": batch["image"][:1]}, count, to="image", truncation=0.0, private_scale=3.0)
    model.generate(caption, count, to="image", truncation=0.0)  # the shared latent's mean, w still drawn
    default, half, zero, encoded, mode = codes
    assert abs(default.std().item() - 3.0) < 0.3  # N(0, (1.5 * 2)^2 I)
    assert abs(half.std().item() - 1.0) < 0.1
    assert torch.equal(zero, torch.zeros_like(zero))
    assert abs(mode.std().item() - 3.0) < 0.3
    _, privates = model.encode_with_private({"image": batch["image"][:1]}, ["image"])
    assert torch.allclose(encoded, privates["image"][0].expand(count, -1))  # an encoded target ignores the knob
    assert "private_scale" in sampling_knobs(MultimodalVAE)
    with pytest.raises(UsageError, match=r"private_scale must be float in \[0, 4\]"):
        model.generate(caption, 2, to="image", private_scale=-1.0)


def test_sample_truncation_is_the_truncation_knobs_default():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", sample_truncation=0.0, latent_dim=4, width=8,
                          text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    caption = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    default = model.generate(caption, 4, to="image")["image"]
    assert torch.allclose(default, default[:1].expand_as(default))  # the posterior mean, every time
    drawn = model.generate(caption, 4, to="image", truncation=1.0)["image"]
    assert not torch.allclose(drawn, drawn[:1].expand_as(drawn))


def test_cross_reconstruction_draws_k_private_latents_only_where_the_term_does_not_encode_the_target(monkeypatch):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=48)
    model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", private_dim=2, cross_samples=4, latent_dim=4,
                          width=8, text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    rows = []
    model.decoders["image"].register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    torch.manual_seed(1)
    model.elbo_terms(batch, 1.0)
    # the subsets (image), (text), (image, text) spread evenly over the rows: the row of subset s = i % 3 for
    # a permutation i of the rows; the image-encoding ones decode once, the text-only ones K = 4 times
    size = batch["image"].shape[0]
    cross = sum(1 for i in range(size) if i % 3 == 1)
    assert sum(rows) == (size - cross) + 4 * cross, (rows, size)
    # with every draw at its mean, K draws score what one draw does: the same objective, K times fewer passes
    monkeypatch.setattr(torch, "randn", lambda *shape, **kw: torch.zeros(*shape, device=kw.get("device")))
    monkeypatch.setattr(torch, "randn_like", lambda tensor, **kw: torch.zeros_like(tensor))
    losses = []
    for draws in (4, 1):
        model.hparams.cross_samples = draws
        torch.manual_seed(2)
        losses.append(model.elbo_terms(batch, 1.0)["loss"])
    assert torch.allclose(*losses), losses


def test_private_prior_scale_is_learned_when_asked():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="mmvae_plus", private_dim=2, learn_private_prior_scale=True,
                          latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    model.elbo_terms(next(iter(datamodule.train_dataloader())), 1.0)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.private_prior_log_scales.values())


def test_private_warmup_keeps_the_private_latent_out_of_the_decoders_then_lets_it_in(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=48)
    model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", private_dim=2, cross_samples=4, private_warmup_steps=8,
                          latent_dim=4, width=8, text_width=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))

    class Gates(L.Callback):
        def __init__(self):
            self.seen, self.rows = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rows.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(float(pl_module.private_gate))

    gates = Gates()
    model.decoders["image"].register_forward_pre_hook(lambda module, inputs: gates.rows.__setitem__(
        -1, gates.rows[-1] + inputs[0].shape[0]) if gates.rows else None)
    trainer = fit(model, datamodule, max_steps=10, callbacks=[gates], limit_val_batches=0)
    # closed for the first half of the warm-up, then rising linearly to 1 at step 8
    assert gates.seen == [0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], gates.seen
    size = batch["image"].shape[0]
    assert gates.rows[0] == size and gates.rows[-1] > size  # K draws of w only once the gate is open
    # a closed gate: the decoders do not read w at all
    model.private_gate.fill_(0.0)
    caption = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    samples = [model.generate(caption, 1, to="image", truncation=0.0, private_scale=scale)["image"] for scale in (1, 3)]
    assert torch.equal(*samples)
    model.private_gate.fill_(1.0)
    samples = [model.generate(caption, 1, to="image", truncation=0.0, private_scale=scale)["image"] for scale in (1, 3)]
    assert not torch.equal(*samples)
    trainer.save_checkpoint(tmp_path / "model.ckpt")  # the gate is in the checkpoint
    assert float(load_generator(tmp_path / "model.ckpt").private_gate) == 1.0


def test_private_dropout_decodes_some_encoded_rows_from_the_prior_and_charges_them_no_private_kl():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = MultimodalVAE(datamodule.data_spec, fusion="mopoe", private_dim=2, private_dropout=0.5, latent_dim=4,
                          width=8, text_width=16)
    encoded = torch.ones(2, 4000)
    model.train()
    assert 0.45 < float(model._private_readers(encoded).mean()) < 0.55
    assert torch.equal(model._private_readers(torch.zeros(2, 10)), torch.zeros(2, 10))  # never adds a reader
    model.eval()
    assert torch.equal(model._private_readers(encoded), encoded)  # only while training
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))

    def private_kl_weight_moves_the_kl(readers):
        model._private_readers = readers
        kls = []
        for private_beta in (1.0, 100.0):
            model.hparams.private_beta = private_beta
            torch.manual_seed(1)
            kls.append(model.elbo_terms(batch, kl_scale=1.0)["kl"].item())
        return kls[0] != kls[1]

    model.train()
    assert private_kl_weight_moves_the_kl(lambda encoded: encoded)
    assert not private_kl_weight_moves_the_kl(torch.zeros_like)  # every row dropped: no private KL anywhere


def test_checkpoint_round_trip_keeps_private_latents(trained_toys, tmp_path):
    models, datamodule = trained_toys
    model = models["private"]
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_generator(tmp_path / "model.ckpt")
    assert loaded.private_dims == {"image": 2, "text": 0} and loaded.hparams.cross_samples == 8
    caption = model.tokenizer.encode(["class one"])
    samples = []
    for candidate in (model, loaded):
        torch.manual_seed(3)
        samples.append(candidate.generate(caption, 8, to="image")["image"])
    assert torch.equal(*samples)


@pytest.mark.parametrize("arguments, message", [({"fusion": "mmvae_plus"}, "needs a private latent"),
                                                ({"private_dim": {"audio": 2}}, "not one of the modalities"),
                                                ({"private_dim": -1}, ">= 0"),
                                                ({"private_prior_scale": 0.0}, "must be > 0"),
                                                ({"cross_samples": 0}, "must be >= 1"),
                                                ({"cross_mean_weight": 1.5}, r"in \[0, 1\]"),
                                                ({"private_sample_scale": -1.0}, "private_sample_scale must be"),
                                                ({"private_warmup_steps": -1}, "private_warmup_steps must be"),
                                                ({"sample_truncation": -1.0}, "sample_truncation must be"),
                                                ({"private_beta": 0.0}, "private_beta must be > 0"),
                                                ({"private_dropout": 1.0}, "private_dropout must be in")])
def test_bad_private_latent_options_say_what_is_wrong(arguments, message):
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    with pytest.raises(ValueError, match=message):
        MultimodalVAE(datamodule.data_spec, latent_dim=4, width=8, text_width=16, **arguments)

"""MultimodalVAE: every fusion trains, the IWAE bound behaves, cross-modal generation learns, private
latents (MMVAE+) vary the samples of one condition, the same code runs under bf16-mixed and 2-process DDP,
and the option groups check themselves."""

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from mmgen_lightning.errors import CheckpointError, UsageError
from mmgen_lightning.knobs import sampling_knobs
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vae import MultimodalVAE
from mmgen_lightning.objectives.vae import iwae_log_weights, multimodal_elbo, read_private
from tests.conftest import ToyDataModule, fit_two_ranks_in_subprocess, two_rank_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
TINY = {"latent_dim": 4, "width": 8, "text_width": 16}


def tiny_vae(data_spec, network=None, **options):
    """A tiny model: ``network`` entries laid over :data:`TINY`, the other option groups as given."""
    return MultimodalVAE(data_spec, network={**TINY, **(network or {})}, **options)


def elbo(model, batch, kl_scale=1.0, objective=None):
    """The training objective of ``batch`` (``objective``: another objective group than the model's)."""
    autoencoder = model.autoencoder
    return multimodal_elbo(autoencoder, autoencoder.read(batch), model.fusion, objective or model.config.objective,
                           kl_scale)


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
    model = tiny_vae(datamodule.data_spec, fusion=fusion, network={"private_dim": private_dim},
                     objective={"cross_samples": 2}, optimization={"lr": 3e-3})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    before = elbo(model, batch)["loss"].item()
    fit(model, datamodule, max_steps=40, limit_val_batches=0)
    after = elbo(model, batch)["loss"].item()
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
            model = tiny_vae(datamodule.data_spec, fusion="mopoe",
                             network={"private_dim": private_dim, "latent_dim": 8, "text_width": 32},
                             objective={"cross_samples": 8}, optimization={"lr": 3e-3})
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
        log_w = iwae_log_weights(model.autoencoder, model.autoencoder.read(batch), model.fusion, 256)  # K,B
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
    model = tiny_vae(datamodule.data_spec, network={"n_mels": 16})
    trainer = fit(model, datamodule, max_steps=3, precision="bf16-mixed", limit_val_batches=1, log_every_n_steps=1)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert math.isfinite(trainer.callback_metrics["val/elbo"].item())


def test_log_mel_is_computed_once_per_batch_and_read_by_encoder_and_likelihood(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "audio"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion="poe", network={"n_mels": 16})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    calls = []
    model.autoencoder.log_mel.register_forward_hook(lambda module, inputs, output: calls.append(output))
    model.training_step(batch, 0)
    assert len(calls) == 1
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.validate(model, torch.utils.data.DataLoader([batch], batch_size=None), verbose=False)  # ELBO and IWAE
    assert len(calls) == 2
    # the audio encoder and the audio likelihood both read that one spectrogram
    inputs = model.autoencoder.read(batch)
    shifted = {**inputs, "log_mel": inputs["log_mel"] + 1.0}
    with torch.no_grad():
        experts = [model.autoencoder.encode(x, ["audio"])[0]["audio"][0] for x in (inputs, shifted)]
        code = torch.zeros(len(batch["audio"]), 4)
        scores = [model.autoencoder.log_prob("audio", x, code) for x in (inputs, shifted)]
    assert not torch.allclose(*experts) and not torch.allclose(*scores)


@pytest.mark.parametrize("fusion", ["poe", "mopoe"])
def test_text_padding_beyond_the_longest_caption_changes_nothing_but_the_cost(fusion):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion=fusion)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    longest = int(batch["text_mask"].sum(1).max())
    assert longest < batch["text"].shape[1]  # the toy captions leave padding columns that no caption uses
    padded, batch = batch, {**batch, "text": batch["text"][:, :longest], "text_mask": batch["text_mask"][:, :longest]}
    decoded_lengths = []
    model.autoencoder.decoders["text"].gru.register_forward_hook(
        lambda module, inputs, output: decoded_lengths.append(inputs[0].shape[1]))  # teacher-forced: L - 1 steps
    results = []
    for inputs in (batch, padded):
        torch.manual_seed(1)
        results.append(elbo(model, inputs)["loss"])
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert decoded_lengths == [longest - 1, longest - 1]
    with torch.no_grad():
        experts = [model.autoencoder.encode(inputs, ["text"])[0]["text"][0] for inputs in (batch, padded)]
    assert torch.allclose(*experts, atol=1e-5)


def test_training_metrics_are_made_only_on_logging_steps(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=32, batch_size=4)
    model = tiny_vae(datamodule.data_spec)
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
    model = tiny_vae(datamodule.data_spec)
    datamodule.setup("fit")
    loss = model.training_step(next(iter(datamodule.train_dataloader())), 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())


def test_ddp_two_cpu_processes(tmp_path):
    config = two_rank_config(tmp_path, {"class_path": "mmgen_lightning.models.MultimodalVAE",
                                         "init_args": {"network": TINY}},
                             {"class_path": "tests.conftest.ToyDataModule", "init_args": {"size": 32, "batch_size": 8}})
    fit_two_ranks_in_subprocess(config, tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def class_spread(images):
    """Mean pairwise L2 distance between images ``N,C,H,W``."""
    flat = images.flatten(1)
    return torch.pdist(flat).mean().item()


def test_private_latents_vary_the_samples_of_one_condition(trained_toys):
    models, _ = trained_toys
    tokenizer = models["shared"].tokenizer
    spreads = {}
    for name, model in models.items():
        torch.manual_seed(0)
        images = model.generate(tokenizer.encode(["class two"]), num_samples=64, to="image")["image"]
        quadrant = images[:, 0, 8:, :8].mean((1, 2)) - images[:, 0, :8, :].mean((1, 2))
        assert (quadrant > 0).float().mean() > 0.9, name  # still the asked class
        # the spread of one caption's samples, averaged over the four classes (one class alone is noisy)
        spreads[name] = sum(class_spread(model.generate(tokenizer.encode([f"class {word}"]), num_samples=64,
                                                        to="image")["image"])
                            for word in ("zero", "one", "two", "three")) / 4
    # the real squares of one class differ in brightness; the private latent carries it to the samples
    assert spreads["private"] > 1.5 * spreads["shared"], spreads


def test_cross_modal_sampling_draws_the_targets_private_latent_from_the_prior_at_private_scale():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion="mmvae_plus", network={"private_dim": 3},
                     sampling={"private_scale": 4.0})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    codes = []
    model.autoencoder.decoders["image"].register_forward_pre_hook(lambda module, inputs: codes.append(inputs[0]))
    count = 512
    model.generate({"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}, count, to="image")
    model.generate({}, count, to="image")
    model.generate({"image": batch["image"][:1]}, count, to="image", truncation=0.0)
    cross, unconditional, reconstruction = (code[:, 4:] for code in codes)
    assert all(code.shape == (count, 7) for code in codes)
    assert abs(cross.std().item() - 4.0) < 0.4  # N(0, c^2 I), c = sampling.private_scale
    assert abs(unconditional.std().item() - 1.0) < 0.1  # p(w) = N(0, I) at truncation 1
    _, privates = model.autoencoder.encode({"image": batch["image"][:1]}, ["image"])
    assert torch.allclose(reconstruction, privates["image"][0].expand(count, -1))  # the posterior mean


def test_private_scale_knob_scales_only_the_cross_modal_prior_draws():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion="mopoe", network={"private_dim": 3},
                     sampling={"private_scale": 3.0})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    codes = []
    model.autoencoder.decoders["image"].register_forward_pre_hook(lambda module, inputs: codes.append(inputs[0][:, 4:]))
    caption, count = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}, 512
    model.generate(caption, count, to="image")  # the recipe's default: c = sampling.private_scale
    model.generate(caption, count, to="image", private_scale=1.0)
    model.generate(caption, count, to="image", private_scale=0.0)
    model.generate({"image": batch["image"][:1]}, count, to="image", truncation=0.0, private_scale=3.0)
    model.generate(caption, count, to="image", truncation=0.0)  # the shared latent's mean, w still drawn
    default, half, zero, encoded, mode = codes
    assert abs(default.std().item() - 3.0) < 0.3  # N(0, 3^2 I)
    assert abs(half.std().item() - 1.0) < 0.1
    assert torch.equal(zero, torch.zeros_like(zero))
    assert abs(mode.std().item() - 3.0) < 0.3
    _, privates = model.autoencoder.encode({"image": batch["image"][:1]}, ["image"])
    assert torch.allclose(encoded, privates["image"][0].expand(count, -1))  # an encoded target ignores the knob
    assert "private_scale" in sampling_knobs(MultimodalVAE)
    with pytest.raises(UsageError, match=r"private_scale must be float in \[0, 4\]"):
        model.generate(caption, 2, to="image", private_scale=-1.0)


def test_the_sampling_group_holds_the_knobs_defaults():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion="mopoe", sampling={"truncation": 0.0})
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
    model = tiny_vae(datamodule.data_spec, fusion="mopoe", network={"private_dim": 2}, objective={"cross_samples": 4})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    rows = []
    decoder = model.autoencoder.decoders["image"]
    decoder.register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    torch.manual_seed(1)
    elbo(model, batch)
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
        torch.manual_seed(2)
        losses.append(elbo(model, batch, objective=model.config.objective.replace(cross_samples=draws))["loss"])
    assert torch.allclose(*losses), losses


@pytest.mark.parametrize("option, value", [("private_beta", 4.0), ("cross_mean_weight", 0.25),
                                           ("learn_private_prior_scale", True), ("private_prior_scale", 2.0)])
def test_an_old_checkpoint_trained_with_a_dropped_option_says_so(option, value, tmp_path):
    checkpoint = torch.load(LEGACY / "vae.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"][option] != value  # off in the fixture, which loads (test_legacy_checkpoints)
    checkpoint["hyper_parameters"][option] = value
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=f"trained with {option}={value!r}, an option this version no longer has"):
        load_generator(tmp_path / "old.ckpt")


def test_private_warmup_keeps_the_private_latent_out_of_the_decoders_then_lets_it_in(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=48)
    model = tiny_vae(datamodule.data_spec, fusion="mopoe", network={"private_dim": 2},
                     objective={"cross_samples": 4, "private_warmup_steps": 8})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))

    class Gates(L.Callback):
        def __init__(self):
            self.seen, self.rows = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rows.append(0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(float(pl_module.autoencoder.private_gate))

    gates = Gates()
    model.autoencoder.decoders["image"].register_forward_pre_hook(lambda module, inputs: gates.rows.__setitem__(
        -1, gates.rows[-1] + inputs[0].shape[0]) if gates.rows else None)
    trainer = fit(model, datamodule, max_steps=10, callbacks=[gates], limit_val_batches=0)
    # closed for the first half of the warm-up, then rising linearly to 1 at step 8
    assert gates.seen == [0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0], gates.seen
    size = batch["image"].shape[0]
    assert gates.rows[0] == size and gates.rows[-1] > size  # K draws of w only once the gate is open
    # a closed gate: the decoders do not read w at all
    model.autoencoder.private_gate.fill_(0.0)
    caption = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    samples = [model.generate(caption, 1, to="image", truncation=0.0, private_scale=scale)["image"] for scale in (1, 3)]
    assert torch.equal(*samples)
    model.autoencoder.private_gate.fill_(1.0)
    samples = [model.generate(caption, 1, to="image", truncation=0.0, private_scale=scale)["image"] for scale in (1, 3)]
    assert not torch.equal(*samples)
    trainer.save_checkpoint(tmp_path / "model.ckpt")  # the gate is in the checkpoint
    assert float(load_generator(tmp_path / "model.ckpt").autoencoder.private_gate) == 1.0


def test_private_dropout_decodes_some_encoded_rows_from_the_prior_and_charges_them_no_private_kl(monkeypatch):
    encoded = torch.ones(2, 4000)
    assert 0.45 < float(read_private(encoded, 0.5).mean()) < 0.55
    assert torch.equal(read_private(torch.zeros(2, 10), 0.5), torch.zeros(2, 10))  # never adds a reader
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_vae(datamodule.data_spec, fusion="mopoe", network={"private_dim": 2},
                     objective={"private_dropout": 0.5})
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))

    def shift_private_mean(module, inputs, hidden):  # the image encoder's hidden: mu of [z, w], then logvar
        hidden = hidden.clone()
        hidden[:, 4:6] += 3.0
        return hidden

    def private_kl_moves_the_kl(draw):
        """Whether moving q(w_image|x_image) moves the KL, the dropout's uniform draws all ``draw``."""
        monkeypatch.setattr(torch, "rand", lambda shape, device=None: torch.full(shape, draw, device=device))
        kls = []
        for shifted in (False, True):
            handle = model.autoencoder.encoders["image"].register_forward_hook(shift_private_mean) if shifted else None
            torch.manual_seed(1)
            kls.append(elbo(model, batch)["kl"].item())
            if handle:
                handle.remove()
        return kls[0] != kls[1]

    model.train()
    assert private_kl_moves_the_kl(draw=0.9)  # no row dropped
    assert not private_kl_moves_the_kl(draw=0.1)  # every row dropped: no private KL anywhere
    model.eval()
    assert private_kl_moves_the_kl(draw=0.1)  # only while training


def test_checkpoint_round_trip_keeps_private_latents(trained_toys, tmp_path):
    models, datamodule = trained_toys
    model = models["private"]
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = load_generator(tmp_path / "model.ckpt")
    assert loaded.autoencoder.private_dims == {"image": 2, "text": 0} and loaded.config.objective.cross_samples == 8
    caption = model.tokenizer.encode(["class one"])
    samples = []
    for candidate in (model, loaded):
        torch.manual_seed(3)
        samples.append(candidate.generate(caption, 8, to="image")["image"])
    assert torch.equal(*samples)


@pytest.mark.parametrize("arguments, message", [
    ({"fusion": "mmvae_plus"}, "network.private_dim: fusion 'mmvae_plus' needs a private latent"),
    ({"network": {"private_dim": {"audio": 2}}}, "network.private_dim: 'audio' is not one of the modalities"),
    ({"network": {"private_dim": -1}}, "network.private_dim must be an integer >= 0"),
    ({"network": {"latent_dim": 0}}, "network.latent_dim must be >= 1, got 0"),
    ({"objective": {"cross_samples": 0}}, "objective.cross_samples must be >= 1, got 0"),
    ({"objective": {"private_warmup_steps": -1}}, "objective.private_warmup_steps must be >= 0"),
    ({"objective": {"private_dropout": 1.0}}, r"objective.private_dropout must be in \[0, 1\)"),
    ({"objective": {"likelihood": "cauchy"}}, "objective.likelihood must be one of laplace, gaussian"),
    ({"objective": {"likelihood_weights": {"audio": 2.0}}}, "objective.likelihood_weights: 'audio' is not one of"),
    ({"objective": {"private_beta": 2.0}}, "objective: unknown option.s. private_beta; allowed: likelihood, "),
    ({"sampling": {"private_scale": -1.0}}, r"sampling.private_scale must be float in \[0, 4\], got -1.0"),
    ({"sampling": {"truncation": -1.0}}, "sampling.truncation must be float >= 0"),
    ({"optimization": {"lr": 0.0}}, "optimization.lr must be > 0")])
def test_bad_options_name_their_section_and_field(arguments, message):
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    with pytest.raises(ValueError, match=message):
        tiny_vae(datamodule.data_spec, **arguments)


def test_the_optimiser_is_adamw_with_weight_decay_on_every_parameter():
    """The group's default is plain ``torch.optim.AdamW(model.parameters(), lr)``: the same step, to the bit."""
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    model = tiny_vae(datamodule.data_spec)
    plain = copy.deepcopy(model)
    optimizers = [model.configure_optimizers(), torch.optim.AdamW(plain.parameters(), lr=1e-3)]
    assert isinstance(optimizers[0], torch.optim.AdamW)
    assert [group["weight_decay"] for group in optimizers[0].param_groups] == [0.01]
    for candidate, optimizer in zip((model, plain), optimizers):
        torch.manual_seed(1)
        elbo(candidate, batch)["loss"].backward()
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))

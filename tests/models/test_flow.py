"""FlowMatching: the path, loss, samplers and ODE likelihood against closed forms; a tiny flow learns
(loss falls, a separately trained classifier recognises its label-conditioned samples); the generate
contract, guidance and bad inputs; checkpoints (EMA weights) round-trip through load_generator; other
conditions and outputs; bf16-mixed and 2-process DDP."""

import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch import nn

from mmgen_lightning.losses import flow_matching_loss
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.flow import FlowMatching
from mmgen_lightning.models.layers.dit import DiT
from mmgen_lightning.models.layers.flow_sampling import euler, guided, heun, ode_log_likelihood
from mmgen_lightning.objectives.flow import sample_time, straight_path
from tests.conftest import ToyDataModule, fit, fit_two_ranks_in_subprocess, two_rank_config

TINY = {"network": {"width": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "condition_layers": 1, "n_mels": 16,
                    "audio_frames": 8},
        "optimization": {"warmup_steps": 1}, "sampling": {"steps": 4}}


def tiny(spec, network: dict | None = None, objective: dict | None = None, optimization: dict | None = None,
         **kwargs) -> FlowMatching:
    """A tiny FlowMatching; each group's entries are laid over TINY's."""
    return FlowMatching(spec, network={**TINY["network"], **(network or {})}, objective=objective,
                        optimization={**TINY["optimization"], **(optimization or {})}, sampling=TINY["sampling"],
                        **kwargs)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --- maths against closed forms -------------------------------------------------------------
def gaussian_velocity(mu: float, sigma: float):
    """The exact marginal velocity of the straight path from N(0, 1) to N(mu, sigma^2) per scalar:
    ``x_t ~ N(t mu, s_t^2)``, ``s_t^2 = (1-t)^2 + t^2 sigma^2``, ``v = mu + (t sigma^2 - (1-t)) / s_t^2 (x - t mu)``."""
    def velocity(x, t):
        t = t.view(-1, *([1] * (x.ndim - 1)))
        variance = (1 - t) ** 2 + t ** 2 * sigma ** 2
        return mu + (t * sigma ** 2 - (1 - t)) / variance * (x - t * mu)
    return velocity


def test_straight_path_loss_and_time_densities():
    x0, x1 = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    x_t, u = straight_path(x0, x1, t)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[-1], x1[-1])
    torch.testing.assert_close(x_t[2], (x0[2] + x1[2]) / 2)
    torch.testing.assert_close(u, x1 - x0)
    assert flow_matching_loss(x1 - x0, x0, x1) == 0
    assert flow_matching_loss(x1 - x0 + 2, x0, x1).item() == pytest.approx(4.0)
    generator = torch.Generator().manual_seed(0)
    uniform = sample_time(20000, "uniform", generator=generator)
    logit = sample_time(20000, "logit_normal", mean=-1.0, std=1.0, generator=generator)
    assert 0 < uniform.min() and uniform.max() < 1 and abs(uniform.mean().item() - 0.5) < 0.01
    # the logit of a logit-normal draw is the normal draw
    assert abs(torch.logit(logit).mean().item() + 1.0) < 0.03 and abs(torch.logit(logit).std().item() - 1.0) < 0.03
    with pytest.raises(ValueError, match="time_density"):
        sample_time(4, "beta")


def test_samplers_integrate_the_exact_gaussian_flow_and_heun_beats_euler():
    mu, sigma = 2.0, 0.5
    velocity = gaussian_velocity(mu, sigma)
    x0 = torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + sigma * x0  # the straight path's flow is affine per scalar: noise quantile -> data quantile
    errors = {}
    for name, sampler in (("euler", euler), ("heun", heun)):
        errors[name] = (sampler(velocity, x0, 8) - exact).abs().max().item()
    assert errors["heun"] < 0.02 and errors["heun"] < errors["euler"] / 20, errors
    x1 = heun(velocity, x0, 32)
    assert abs(x1.mean().item() - mu) < 0.02 and abs(x1.std().item() - sigma) < 0.01


def test_ode_log_likelihood_matches_the_gaussian_density():
    mu, sigma = 1.0, 0.7
    x1 = mu + sigma * torch.randn(6, 2, 3, 3, dtype=torch.float64)
    log_p = ode_log_likelihood(gaussian_velocity(mu, sigma), x1, steps=64, hutchinson_samples=1)
    exact = torch.distributions.Normal(mu, sigma).log_prob(x1).flatten(1).sum(1)
    torch.testing.assert_close(log_p, exact, atol=1e-3 * x1[0].numel(), rtol=0)


def test_hutchinson_estimate_is_unbiased_for_a_non_diagonal_field():
    matrix = torch.tensor([[0.5, 1.0, 0.0], [-1.0, 0.2, 0.3], [0.0, 0.4, -0.6]], dtype=torch.float64)
    velocity = lambda x, t: x @ matrix.T  # noqa: E731 - constant divergence trace(A)
    x1 = torch.randn(4000, 3, dtype=torch.float64)
    log_p = ode_log_likelihood(velocity, x1, steps=8, hutchinson_samples=2)
    x0 = x1 @ torch.linalg.matrix_exp(-matrix).T
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(x0).sum(1) - matrix.trace()
    assert (log_p - exact).mean().abs() < 0.05  # each estimate is noisy, their mean is right


def test_guidance_combines_the_conditional_and_null_velocities():
    calls = []

    def velocity(x, t, drop):
        calls.append(None if drop is None else drop.tolist())
        conditional = torch.full_like(x, 3.0)
        return conditional if drop is None else torch.where(drop.view(-1, 1), torch.ones_like(x), conditional)

    x, t = torch.zeros(2, 1), torch.zeros(2)
    assert guided(velocity, 1.0)(x, t).eq(3.0).all() and calls == [None]  # one evaluation
    assert guided(velocity, 2.5)(x, t).eq(1.0 + 2.5 * 2.0).all()
    assert calls[-1] == [False, False, True, True]  # both halves in one batch

    calls.clear()  # guidance in an interval of t: the plain conditional velocity outside it
    limited = guided(velocity, 2.5, interval=(0.0, 0.5))
    assert limited(x, torch.full((2,), 0.25)).eq(1.0 + 2.5 * 2.0).all()
    assert limited(x, torch.full((2,), 0.75)).eq(3.0).all() and calls[-1] is None
    with pytest.raises(ValueError, match="guidance interval"):
        guided(velocity, 2.0, interval=(0.6, 0.4))


def test_dit_pads_odd_sizes_and_starts_at_zero_velocity():
    network = DiT(1, (13, 10), patch_size=4, width=32, depth=1, num_heads=2, cross_attention=False)
    x = torch.randn(2, 1, 13, 10)
    out = network(x, torch.rand(2))
    assert out.shape == x.shape and out.abs().max() == 0  # adaLN-zero output layer
    nn.init.normal_(network.final.weight)
    assert network(x, torch.rand(2)).abs().max() > 0


# --- a tiny flow learns -----------------------------------------------------------------------
def train_classifier(datamodule) -> nn.Module:
    """A tiny judge trained on real toy images only."""
    torch.manual_seed(1)
    images = torch.stack([datamodule.dataset("train")[i]["image"] for i in range(64)])
    labels = torch.stack([datamodule.dataset("train")[i]["attributes"][0] for i in range(64)])
    judge = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(judge.parameters(), 0.05)
    for _ in range(100):
        loss = nn.functional.cross_entropy(judge(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (judge(images).argmax(1) == labels).float().mean() == 1.0
    return judge


def test_label_conditioned_flow_learns_and_its_samples_are_recognised():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "label"], size=64, batch_size=16)
    model = tiny(datamodule.data_spec, condition="label", optimization={"lr": 3e-3}, objective={"cond_drop": 0.1})
    batch = next(iter(datamodule.train_dataloader()))
    generator = torch.Generator().manual_seed(0)
    before = model.loss(batch, generator).item()
    fit(model, datamodule, max_steps=120, limit_val_batches=0)
    after = model.loss(batch, torch.Generator().manual_seed(0)).item()
    assert after < 0.5 * before, (before, after)
    judge = train_classifier(datamodule)
    labels = torch.arange(4).repeat(8)
    samples = model.generate({"label": labels}, len(labels), steps=8, sampler="heun", seed=0)["image"]
    assert samples.shape == (32, 1, 16, 16) and samples.min() >= -1 and samples.max() <= 1
    assert (judge(samples).argmax(1) == labels).float().mean() >= 0.9
    guided_samples = model.generate({"label": labels}, len(labels), steps=8, guidance_scale=2.0, seed=0)["image"]
    assert (judge(guided_samples).argmax(1) == labels).float().mean() >= 0.9
    # exact likelihood: real images of the right label beat the same images under a wrong label
    real = next(iter(datamodule.val_dataloader()))
    right = model.log_likelihood(real, likelihood_steps=8, hutchinson_samples=2)
    wrong = model.log_likelihood({**real, "label": (real["label"] + 1) % 4}, likelihood_steps=8, hutchinson_samples=2)
    assert right.name == "ode" and right.dims.eq(256).all() and right.log_prob.dtype == torch.float64
    gap = right.log_prob - wrong.log_prob  # each a one-probe-per-step estimate: right on most, by far on average
    assert (gap > 0).float().mean() >= 0.8 and gap.mean() > 10, gap


# --- contracts ----------------------------------------------------------------------------------
def test_generate_contract_seed_steps_and_directions(toy_datamodule):
    model = tiny(toy_datamodule.data_spec, condition="text")
    batch = next(iter(toy_datamodule.train_dataloader()))
    conditions = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    a = model.generate(conditions, 3, to="image", seed=5, steps=2)["image"]
    b = model.generate(conditions, 3, to="image", seed=5, steps=2)["image"]
    c = model.generate(conditions, 3, to="image", seed=6, steps=2)["image"]
    assert a.shape == (3, 1, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="cannot generate label->image"):
        model.generate({"label": torch.tensor([1])}, 1)
    maps = model.cross_attention_maps(conditions, a[:1])
    assert maps.shape == (1, 16, conditions["text"].shape[1])
    torch.testing.assert_close(maps.sum(-1), torch.ones(1, 16))
    assert maps[0, :, ~conditions["text_mask"][0]].eq(0).all()  # padding gets no attention


def test_bad_inputs_are_one_line_errors_naming_the_option(toy_datamodule):
    spec = toy_datamodule.data_spec
    with pytest.raises(ValueError, match=r"condition: unknown modality 'smell'"):
        tiny(spec, condition="smell")
    with pytest.raises(ValueError, match=r"^latent.vqvae_checkpoint must name a project VQVAE checkpoint"):
        tiny(spec, latent={})
    with pytest.raises(ValueError, match=r"^network.width must be divisible by num_heads \(2\), got 33$"):
        tiny(spec, network={"width": 33})
    with pytest.raises(ValueError, match=r"^objective: unknown option\(s\) cond_dropout; allowed: cond_drop"):
        tiny(spec, objective={"cond_dropout": 0.1})
    model = tiny(spec, condition="text", objective={"cond_drop": 0.0})
    batch = next(iter(toy_datamodule.train_dataloader()))
    conditions = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    with pytest.raises(ValueError, match=r"guidance_scale: 2.0 needs a trained null condition.*cond_drop=0") as error:
        model.generate(conditions, 1, guidance_scale=2.0)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"steps must be int >= 1, got 0 \(steps=0\)"):
        model.generate(conditions, 1, steps=0)
    with pytest.raises(ValueError, match="sampler: unknown 'rk4'"):
        model.generate(conditions, 1, sampler="rk4")
    with pytest.raises(ValueError, match=r"guidance_start/guidance_stop: need 0 <= start <= stop <= 1"):
        model.generate(conditions, 1, guidance_start=0.8, guidance_stop=0.2)


def test_checkpoint_round_trip_carries_the_ema_weights(tmp_path, toy_datamodule):
    torch.manual_seed(0)
    model = tiny(toy_datamodule.data_spec, condition="text")
    ema = EMAWeightAveraging(decay=0.5)
    fit(model, toy_datamodule, max_steps=6, limit_val_batches=1, default_root_dir=tmp_path, enable_checkpointing=True,
        callbacks=[ema, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    stored = torch.load(tmp_path / "last.ckpt", weights_only=True)
    averaged = {k[len("module."):]: v for k, v in ema._average_model.state_dict().items() if k.startswith("module.")}
    assert "current_model_state" in stored  # Lightning kept the raw weights apart
    loaded = load_generator(tmp_path / "last.ckpt")
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, averaged[name], msg=name)
    batch = next(iter(toy_datamodule.val_dataloader()))
    conditions = {"text": batch["text"][:2], "text_mask": batch["text_mask"][:2]}
    torch.testing.assert_close(loaded.generate(conditions, 2, seed=0)["image"],
                               model.generate(conditions, 2, seed=0)["image"])  # fit ends on the EMA weights
    assert loaded.tokenizer is not None


def tiny_bert(folder) -> None:
    """A tiny BERT and its word-piece tokenizer saved as a local ``save_pretrained`` folder."""
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "square", "class", "zero",
             "one", "two", "three"]
    transformers.BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(folder)


@pytest.mark.parametrize("trainable", [False, True])
def test_a_pretrained_text_encoder_reads_the_captions(tmp_path, trainable):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text",
                 network={"text_encoder_path": str(tmp_path / "bert"), "text_encoder_trainable": trainable})
    model.tokenizer = datamodule.tokenizer
    bert = model.velocity.embedder.encode.encoder.encoder.model
    before = [p.detach().clone() for p in bert.parameters()]
    fit(model, datamodule, max_steps=3, limit_val_batches=0, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], enable_checkpointing=True)
    changed = any(not torch.equal(p, q) for p, q in zip(bert.parameters(), before))
    assert changed == trainable and all(p.requires_grad == trainable for p in bert.parameters())
    # the caption's words reach the velocity: two captions give two fields from the same noise
    conditions = model.tokenizer.encode(["class one", "class two"])
    tokens, mask = model.velocity.embedder.encode(conditions)
    assert tokens.shape[:2] == mask.shape and tokens.shape[-1] == TINY["network"]["width"]
    assert not torch.allclose(tokens[0, mask[0]].mean(0), tokens[1, mask[1]].mean(0))
    loaded = load_generator(tmp_path / "ckpt" / "last.ckpt")
    torch.testing.assert_close(loaded.generate(conditions, 2, seed=0)["image"],
                               model.generate(conditions, 2, seed=0)["image"])
    with pytest.raises(ValueError, match="network.text_encoder_path is only used with condition='text'"):
        tiny(datamodule.data_spec, condition="label", network={"text_encoder_path": str(tmp_path / "bert")})


@pytest.mark.parametrize("condition", ["audio", "image", None])
def test_other_conditions_train_and_sample(condition):
    modalities = ["image"] + ([condition] if condition and condition != "image" else [])
    datamodule = ToyDataModule(modalities=modalities, size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition=condition, network={"condition_patch_size": 4})
    fit(model, datamodule, max_steps=2, limit_val_batches=1)
    conditions = {condition: next(iter(datamodule.val_dataloader()))[condition][:2]} if condition else {}
    assert model.generate(conditions, 2, steps=2)["image"].shape == (2, 1, 16, 16)
    if condition is None:
        with pytest.raises(ValueError, match="guidance_scale"):
            model.generate({}, 1, guidance_scale=3.0)


def test_audio_output_as_log_mel_with_likelihood_over_its_bins():
    datamodule = ToyDataModule(modalities=["audio", "label"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="label", output="audio")
    fit(model, datamodule, max_steps=2, limit_val_batches=1)
    audio = model.generate({"label": torch.tensor([0, 1])}, 2, steps=2)["audio"]
    assert audio.shape == (2, 2000) and audio.abs().max() <= 1
    batch = next(iter(datamodule.val_dataloader()))
    result = model.log_likelihood(batch, likelihood_steps=2)
    assert result.dims.eq(model.codec.log_mel.n_mels * model.codec.log_mel.frames).all() and torch.isfinite(result.log_prob).all()


def test_bf16_mixed_trains():
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text")
    trainer = fit(model, datamodule, max_steps=3, precision="bf16-mixed", limit_val_batches=1)
    assert trainer.global_step == 3 and all(torch.isfinite(p).all() for p in model.parameters())
    batch = next(iter(datamodule.val_dataloader()))
    conditions = {"text": batch["text"][:1], "text_mask": batch["text_mask"][:1]}
    assert torch.isfinite(model.generate(conditions, 1, steps=2, guidance_scale=2.0)["image"]).all()


def test_ddp_two_cpu_processes(tmp_path):
    config = two_rank_config(tmp_path, {"class_path": "mmgen_lightning.models.flow.FlowMatching",
                                         "init_args": {"condition": "text", **TINY}},
                             {"class_path": "tests.conftest.ToyDataModule",
                              "init_args": {"modalities": ["image", "text"], "size": 32, "batch_size": 4}})
    fit_two_ranks_in_subprocess(config, tmp_path)
    stored = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert stored["global_step"] == 3
    model = load_generator(tmp_path / "ckpt" / "last.ckpt")
    assert isinstance(model, FlowMatching) and all(torch.isfinite(p).all() for p in model.parameters())


# --- latent space and large images ------------------------------------------------------------
def test_latent_flow_at_128_px_keeps_its_frozen_vqvae_in_the_checkpoint(tmp_path):
    from mmgen_lightning.datamodules.shapes import ShapesDataModule
    from mmgen_lightning.models.vqvae import VQVAE

    torch.manual_seed(0)
    datamodule = ShapesDataModule(modalities=["image", "text"], image_size=128, train_size=8, val_size=4, test_size=4,
                                  batch_size=4)
    vqvae = VQVAE(datamodule.data_spec, network={"num_codes": 8, "code_dim": 4, "width": 8, "downsample": 16})
    fit(vqvae, datamodule, max_steps=1, limit_val_batches=0).save_checkpoint(tmp_path / "vqvae.ckpt")
    model = tiny(datamodule.data_spec, condition="text", latent={"vqvae_checkpoint": str(tmp_path / "vqvae.ckpt")},
                 network={"patch_size": 2})
    frozen = {k: v.clone() for k, v in model.codec.vqvae.state_dict().items()}
    fit(model, datamodule, max_steps=2, limit_val_batches=0, enable_checkpointing=True, default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    assert model.velocity.dit.size == (8, 8) and model.hparams.latent["latent_scale"] > 0  # 128 px / 16: 8x8 latents
    for name, value in model.codec.vqvae.state_dict().items():
        torch.testing.assert_close(value, frozen[name], msg=name)  # the autoencoder never trains
    (tmp_path / "vqvae.ckpt").unlink()  # the flow checkpoint alone rebuilds it
    loaded = load_generator(tmp_path / "ckpt" / "last.ckpt")
    batch = next(iter(datamodule.val_dataloader()))
    images = loaded.generate({"text": batch["text"][:2], "text_mask": batch["text_mask"][:2]}, 2, steps=2)["image"]
    assert images.shape == (2, 3, 128, 128) and images.abs().max() <= 1
    assert loaded.log_likelihood(batch) is None  # a density of latents is not one of pixels


@pytest.mark.parametrize("size", [128, 256])
def test_image_layers_and_shapes_reach_256_px(size):
    from mmgen_lightning.datamodules.shapes import ShapesDataModule
    from mmgen_lightning.models.layers.image import ImageDecoder, ImageEncoder

    datamodule = ShapesDataModule(modalities=["image"], image_size=size, train_size=2, val_size=1, test_size=1)
    image = datamodule.dataset("train")[0]["image"]
    assert image.shape == (3, size, size) and image.min() >= -1 and image.max() <= 1
    assert (image > -1).float().mean() > 0.01  # the shape is drawn
    encoder, decoder = ImageEncoder(3, size, 16, width=8), ImageDecoder(16, 3, size, width=8)
    assert encoder(image[None]).shape == (1, 16) and decoder(torch.zeros(1, 16)).shape == (1, 3, size, size)
    assert max(m.out_channels for m in encoder.modules() if isinstance(m, nn.Conv2d)) == 64  # capped at 8x width


def test_caption_attention_logger_draws_one_tile_per_word(toy_datamodule):
    from mmgen_lightning.callbacks.flow_attention_maps import CaptionAttentionLogger

    model = tiny(toy_datamodule.data_spec, condition="text")
    model.tokenizer = toy_datamodule.tokenizer
    batch = next(iter(toy_datamodule.val_dataloader()))
    conditions = {"text": batch["text"][:2], "text_mask": batch["text_mask"][:2]}
    grid, words = CaptionAttentionLogger(tile_size=16, sampling={"steps": 2}).render(model, conditions)
    assert words == [["class", "zero"], ["class", "one"]] or all(len(row) == 2 for row in words)
    assert grid.shape == (3, 2 + 2 * 18, 2 + 3 * 18) and 0 <= grid.min() and grid.max() <= 1

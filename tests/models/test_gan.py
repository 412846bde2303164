"""ConditionalGAN: each player's step touches only its own weights, gradient accumulation equals one
large batch, a tiny GAN covers the modes of 8 Gaussians, sampling knobs behave, the EMA callback averages
the generator once per batch and checkpoints carry that average, the options check themselves, and the
same code runs under bf16-mixed and 2-process DDP (no unused-parameter search)."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmgen_lightning.callbacks import EMA
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.objectives.gan import GANObjective, aligner_loss, discriminator_objective, generator_objective
from tests.conftest import ToyDataModule, fit, fit_two_ranks_in_subprocess

TINY = {"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16, "n_mels": 16}


def tiny(spec, network: dict | None = None, **kwargs) -> ConditionalGAN:
    """A tiny ConditionalGAN; ``network`` entries are laid over TINY's."""
    return ConditionalGAN(spec, network={**TINY, **(network or {})}, **kwargs)


def recipe_ema(decay: float = 0.999) -> EMA:
    """The EMA callback as the recipes set it."""
    return EMA(decay=decay, warmup=True, use_buffers=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(module: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(module.parameters(), before))


def test_each_player_step_leaves_the_other_players_weights_unchanged():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "label"], size=32, batch_size=8)
    model = tiny(datamodule.data_spec, condition="label", objective={"r1_gamma": 1.0, "n_critic": 2})
    steps, original = [], model._step

    def spy(optimizer, network, measure=True):
        other = model.discriminator if network is model.generator else model.generator
        other_before, own_before = snapshot(other), snapshot(network)
        other_has_gradients = any(p.grad is not None for p in other.parameters())
        norm = original(optimizer, network, measure)
        steps.append({"player": "generator" if network is model.generator else "discriminator",
                      "other_gradients": other_has_gradients, "other_unchanged": same(other, other_before),
                      "own_changed": not same(network, own_before)})
        return norm

    model._step = spy
    fit(model, datamodule, max_epochs=2, limit_val_batches=0)
    players = [s["player"] for s in steps]
    assert players == ["discriminator", "discriminator", "generator"] * 4  # n_critic = 2
    for step in steps:
        assert not step["other_gradients"], step  # toggle_optimizer + detach: no gradient reached the other player
        assert step["other_unchanged"] and step["own_changed"], step
    assert model.discriminator_steps == 8 and model.generator_steps == 4


class Queue:
    """Latents handed out in order, so two schedules can be fed the very same noise."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows, self.used = rows, 0

    def __call__(self, num_samples: int, truncation=None, generator=None) -> torch.Tensor:
        out = self.rows[self.used:self.used + num_samples]
        self.used += num_samples
        return out


def test_gradient_accumulation_equals_one_large_batch():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "label"], size=16)
    datamodule.setup("fit")
    items = [datamodule.dataset("train")[i] for i in range(16)]
    noise = torch.randn(64, TINY["latent_dim"])
    torch.manual_seed(1)
    # spectral norm's power iteration would run once per forward, i.e. twice with two micro-batches
    reference = tiny(datamodule.data_spec, condition="label", network={"spectral_norm": False})
    accumulated = tiny(datamodule.data_spec, condition="label", network={"spectral_norm": False},
                       objective={"accumulate_grad_batches": 2})
    accumulated.load_state_dict(reference.state_dict())
    initial = {name: value.clone() for name, value in reference.state_dict().items()}
    for model, batch_size in ((reference, 16), (accumulated, 8)):
        model.latents = Queue(noise)
        fit(model, loader=DataLoader(items, batch_size=batch_size), max_steps=2)  # one step of each player
        assert model.discriminator_steps == 1 and model.generator_steps == 1
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, atol=2e-6, rtol=1e-5, msg=name)
    assert not torch.equal(initial["generator.project.weight"], reference.generator.project.weight)
    assert not torch.equal(initial["discriminator.linear.weight"], reference.discriminator.linear.weight)


# --- learning: 8 Gaussians on a circle -------------------------------------------------------------
CENTERS = torch.tensor([[0.8 * math.cos(2 * math.pi * k / 8), 0.8 * math.sin(2 * math.pi * k / 8)] for k in range(8)])
STD = 0.02


class PointGenerator(nn.Module):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, z, conditions=None):
        return self.net(z).view(-1, 2, 1, 1)  # 2-D points as 2-channel 1x1 "images"


class PointDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.linear = nn.Linear(64, 1)

    def features(self, x):
        return self.net(x.flatten(1))

    def embed(self, conditions):
        return None

    def score(self, features, embedding):
        return self.linear(features).squeeze(1)

    def forward(self, x, conditions=None):
        return self.score(self.features(x), None)


class PointGAN(ConditionalGAN):
    """The family's training step with MLP players, through the same build hooks the image nets use."""

    def build_generator(self):
        return PointGenerator(self.config.network.latent_dim)

    def build_discriminator(self):
        return PointDiscriminator()


def test_mixture_of_8_gaussians_covers_at_least_7_modes():
    torch.manual_seed(0)
    points = (CENTERS[torch.randint(8, (300 * 256,))] + STD * torch.randn(300 * 256, 2)).view(300, 256, 2, 1, 1)
    loader = DataLoader([{"image": batch} for batch in points], batch_size=None)  # 300 ready-made batches
    model = PointGAN({"modalities": ["image"]}, condition=None, network={"latent_dim": 8},
                     objective={"loss": "non_saturating", "r1_gamma": 0.02},
                     optimization={"lr": 1e-3, "betas": (0.0, 0.9), "group_lr": {"discriminator": 2e-3}})
    fit(model, loader=loader, max_epochs=1, callbacks=[recipe_ema(0.99)])  # the average is copied in at the end
    samples = model.generate({}, 2000, seed=0)["image"].view(-1, 2)
    distances = torch.cdist(samples, CENTERS)
    nearest, mode = distances.min(1)
    near = nearest < 5 * STD  # neighbouring modes are 0.61 apart
    counts = torch.bincount(mode[near], minlength=8)
    assert (counts >= 20).sum() >= 7, counts.tolist()  # a mode is covered by >= 1% of the samples
    # and the samples sit on the modes: spraying the unit disc would put 8% this near (seeds 0-3 give 19-28%)
    assert near.float().mean() > 0.15, near.float().mean()


# --- sampling ------------------------------------------------------------------------------------
SPEC = {"dataset": "toy", "modalities": ["image", "text", "label"], "vocab_size": 12, "max_text_length": 6,
        "image_size": 16, "image_channels": 1, "num_classes": 4, "num_frames": 4, "video_size": 16}


def test_generate_seeds_truncation_interpolation_and_directions():
    torch.manual_seed(0)
    model = tiny(SPEC, condition="label")
    label = {"label": torch.tensor([2])}
    a, b = model.generate(label, 4, seed=3)["image"], model.generate(label, 4, seed=3)["image"]
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, model.generate(label, 4, seed=4)["image"])
    mode = model.generate(label, 3, truncation=0.0)["image"]  # z = 0 for every sample
    torch.testing.assert_close(mode[0].expand_as(mode), mode)
    z = model.latents(500, truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    path = model.generate(label, 9, seed=0, interpolate=True)["image"].flatten(1)
    steps = (path[1:] - path[:-1]).norm(dim=1)
    assert steps.max() < (path[-1] - path[0]).norm()  # a path, not independent draws
    with pytest.raises(ValueError, match="label->image"):
        model.generate({}, 2)  # a conditional GAN needs its condition
    with pytest.raises(ValueError, match="latents must have shape"):
        model.generate(label, 2, latents=torch.zeros(3, 8))


class LiveGenerator(L.Callback):
    """Records, after every training batch, the generator's live weights and the Trainer's step count."""

    def __init__(self) -> None:
        self.weights, self.global_steps = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append({name: value.clone() for name, value in pl_module.generator.state_dict().items()})
        self.global_steps.append(trainer.global_step)


def test_the_ema_callback_averages_the_generator_once_per_batch_and_checkpoints_sample_the_average(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=32, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text")
    live, decay = LiveGenerator(), 0.3
    fit(model, datamodule, max_epochs=1, limit_val_batches=1, enable_checkpointing=True, default_root_dir=tmp_path,
        callbacks=[recipe_ema(decay), live, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    assert live.global_steps == [2, 4, 6, 8]  # Lightning counts both players' steps: 2 per batch
    # one update per batch, as the built-in EMA moved once per generator step, the n-th at the rate
    # min(decay, (1 + n) / (10 + n)) (0.25, then the decay); the first copies the generator
    expected = live.weights[0]
    for n, weights in enumerate(live.weights[1:], start=2):
        rate = min(decay, (1 + n) / (10 + n))
        expected = {name: rate * expected[name] + (1 - rate) * value for name, value in weights.items()}
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["gan_steps"] == {"discriminator": 4, "generator": 4}
    for name, value in expected.items():
        torch.testing.assert_close(checkpoint["state_dict"][f"generator.{name}"], value, msg=name)
        # the live weights ride beside it, so a resumed run continues both
        torch.testing.assert_close(checkpoint["current_model_state"][f"generator.{name}"], live.weights[-1][name])
    assert not torch.allclose(expected["project.weight"], live.weights[-1]["project.weight"])
    buffers = [name for name, _ in model.named_buffers()]
    assert any("parametrizations" in name for name in buffers)  # spectral norm's power-iteration vectors
    for name in buffers:  # copied from the live networks, not averaged (use_buffers: false)
        torch.testing.assert_close(checkpoint["state_dict"][name], checkpoint["current_model_state"][name], msg=name)

    loaded = load_generator(tmp_path / "last.ckpt")
    assert loaded.discriminator_steps == model.discriminator_steps == 4
    captions = model.tokenizer.encode(["class two", "class three"])
    averaged = loaded.generate(captions, 2, seed=0)["image"]
    torch.testing.assert_close(averaged, model.generate(captions, 2, seed=0)["image"])  # fit ends on the average
    model.generator.load_state_dict(live.weights[-1])
    assert not torch.allclose(averaged, model.generate(captions, 2, seed=0)["image"])


def test_bad_options_are_one_line_errors_naming_the_field():
    with pytest.raises(ValueError, match=r"^objective.loss must be one of non_saturating, hinge, wgan_gp, "
                                         r"least_squares, got 'vanilla'$"):
        tiny(SPEC, objective={"loss": "vanilla"})
    with pytest.raises(ValueError, match="condition: unknown 'image'; allowed: label, text, audio"):
        tiny(SPEC, condition="image")
    with pytest.raises(ValueError, match="'audio' is not carried by the data"):
        tiny(SPEC, condition="audio")
    with pytest.raises(ValueError, match=r"^objective.n_critic must be an integer >= 1, got 0$"):
        tiny(SPEC, objective={"n_critic": 0})
    with pytest.raises(ValueError, match=r"^network.video_generator must be one of warp, conv, got 'gru'$"):
        tiny(SPEC, network={"video_generator": "gru"})
    with pytest.raises(ValueError, match=r"^network: unknown option\(s\) widht; allowed: video_generator, latent_dim"):
        tiny(SPEC, network={"widht": 8})
    with pytest.raises(ValueError, match=r"^objective.aligner_path must name an Aligner checkpoint when "
                                         r"aligner_weight > 0, got None$"):
        tiny(SPEC, objective={"aligner_weight": 1.0})
    with pytest.raises(ValueError, match=r"^objective.condition_mismatch needs a condition; got condition=None$"):
        tiny(SPEC, condition=None, objective={"condition_mismatch": True})
    with pytest.raises(ValueError, match=r"^optimization.group_lr: unknown group\(s\) critic; the GAN's groups are "
                                         r"generator, discriminator$"):
        tiny(SPEC, optimization={"group_lr": {"critic": 1e-3}})
    with pytest.raises(ValueError, match=r"^optimization: the GAN trains at constant rates; got warmup_steps=10"):
        tiny(SPEC, optimization={"warmup_steps": 10})
    with pytest.raises(ValueError, match=r"^sampling.truncation must be >= 0 or null, got -1.0$"):
        tiny(SPEC, sampling={"truncation": -1.0})
    with pytest.raises(ValueError, match="image_size must be one of 16, 32, 64"):
        tiny({**SPEC, "image_size": 28})


def test_two_adams_at_the_players_rates_and_a_sampling_default_that_generate_uses():
    model = tiny(SPEC, optimization={"lr": 2e-4}, sampling={"truncation": 0.0})
    generator_adam, discriminator_adam = model.configure_optimizers()
    assert [type(o).__name__ for o in (generator_adam, discriminator_adam)] == ["Adam", "Adam"]
    assert generator_adam.defaults["lr"] == 2e-4 and discriminator_adam.defaults["lr"] == 4e-4  # TTUR kept
    assert generator_adam.defaults["betas"] == (0.0, 0.9) and generator_adam.defaults["weight_decay"] == 0
    assert [p for group in generator_adam.param_groups for p in group["params"]] == list(model.generator.parameters())
    label = {"label": torch.tensor([1])}
    mode = model.generate(label, 3, seed=1)["image"]  # the group's truncation 0: z = 0 for every sample
    torch.testing.assert_close(mode[0].expand_as(mode), mode)
    assert not torch.allclose(model.generate(label, 3, seed=1, truncation=1.0)["image"], mode)


def test_discriminator_objective_adds_each_penalty_with_its_weight():
    torch.manual_seed(0)
    model = tiny(SPEC, condition="label")
    real, conditions = torch.rand(4, 1, 16, 16) * 2 - 1, {"label": torch.tensor([0, 1, 2, 3])}
    z = torch.randn(4, 8)
    lazy = GANObjective(r1_gamma=2.0, r1_every=4)
    on = discriminator_objective(model.generator, model.discriminator, real, z, conditions, lazy, step=8)
    off = discriminator_objective(model.generator, model.discriminator, real, z, conditions, lazy, step=9)
    assert "r1" not in off and torch.equal(off["loss"], off["adversarial"])
    # lazy R1: gamma / 2 * E||grad_x D||^2, times r1_every on the steps it applies
    torch.testing.assert_close(on["loss"], on["adversarial"] + 0.5 * 2.0 * 4 * on["r1"])
    assert on["r1"] > 0
    wgan = GANObjective(loss="wgan_gp")
    assert wgan.penalty_weight == 10.0 and GANObjective().penalty_weight == 0.0
    terms = discriminator_objective(model.generator, model.discriminator, real, z, conditions, wgan)
    torch.testing.assert_close(terms["loss"], terms["adversarial"] + 10.0 * terms["gp"])
    torch.testing.assert_close(terms["adversarial"], terms["d_fake"] - terms["d_real"])  # E D(fake) - E D(real)


def test_frozen_pretrained_text_encoder_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "class", "zero", "one", "two", "three"]
    transformers.BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(tmp_path)
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny(datamodule.data_spec, condition="text", network={"text_encoder_path": str(tmp_path)})
    frozen = snapshot(model.text_encoder)
    fit(model, datamodule, max_steps=4, limit_val_batches=0)
    assert same(model.text_encoder, frozen) and not any(p.requires_grad for p in model.text_encoder.parameters())
    features = model.condition_inputs(model.tokenizer.encode(["class one", "class two"]))["text_features"]
    assert features.shape == (2, 16) and not torch.allclose(features[0], features[1])
    assert model.generate(model.tokenizer.encode(["class two"]), 2, seed=0)["image"].shape == (2, 1, 16, 16)


# --- precision, video, distributed -----------------------------------------------------------------
def test_bf16_mixed_trains_text_and_audio_conditions_with_every_regulariser():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text", "audio"], size=16, batch_size=8)
    for condition, loss in (("text", "wgan_gp"), ("audio", "non_saturating")):
        model = tiny(datamodule.data_spec, condition=condition,
                     objective={"loss": loss, "r1_gamma": 1.0, "r1_every": 2, "condition_mismatch": True})
        trainer = fit(model, datamodule, max_steps=4, precision="bf16-mixed", limit_val_batches=1, log_every_n_steps=1)
        metrics = trainer.callback_metrics
        for key in ("train/loss_discriminator", "train/loss_generator", "train/d_real", "train/d_fake",
                    "train/grad_norm_discriminator", "train/grad_norm_generator", "val/d_real"):
            assert math.isfinite(metrics[key].item()), (condition, key)
        assert "train/r1" in metrics and ("train/gp" in metrics) == (loss == "wgan_gp")


class TinyVideos(Dataset):
    """A bright 8x8 square sliding right (caption "class one") or down ("class two") over 4 frames."""

    def __init__(self, tokenizer) -> None:
        self.captions = tokenizer.encode(["class one", "class two"])

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> dict:
        kind, video = index % 2, -torch.ones(4, 1, 16, 16)
        for frame in range(4):
            row, col = (0, 2 * frame) if kind == 0 else (2 * frame, 0)
            video[frame, :, row:row + 8, col:col + 8] = 1.0
        return {"video": video, "text": self.captions["text"][kind], "text_mask": self.captions["text_mask"][kind]}


@pytest.mark.parametrize("video_generator, discriminator_frames", [("warp", 2), ("conv", 0)])
def test_text_to_video_trains_and_samples_clips(video_generator, discriminator_frames):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"])
    spec = {**datamodule.data_spec, "modalities": ["video", "text"], "num_frames": 4, "video_size": 16}
    model = tiny(spec, condition="text", output="video",
                 network={"video_generator": video_generator, "discriminator_frames": discriminator_frames})
    model.tokenizer = datamodule.tokenizer
    trainer = fit(model, loader=DataLoader(TinyVideos(datamodule.tokenizer), batch_size=8), max_steps=4,
                  log_every_n_steps=1)
    assert math.isfinite(trainer.callback_metrics["train/loss_generator"].item())
    clips = model.generate(datamodule.tokenizer.encode(["class one"]), 3, seed=0)["video"]
    assert clips.shape == (3, 4, 1, 16, 16) and clips.abs().max() <= 1
    if video_generator == "warp":  # every frame is the one content image, shifted (in whole pixels: after 4 steps
        ink = (clips + 1).sum((2, 3, 4))  # the path may still be under one; motion is tested below)
        assert (ink > 0).all()


def test_video_discriminator_scores_clip_and_frames_apart_and_each_branch_answers_for_its_own_input():
    torch.manual_seed(0)
    spec = {**SPEC, "modalities": ["video", "text"], "num_frames": 4, "video_size": 32}
    model = tiny(spec, condition="text", output="video", network={"discriminator_frames": 4})
    discriminator = model.discriminator.eval()
    conditions = {"text": torch.randint(0, 12, (3, 6)), "text_mask": torch.ones(3, 6, dtype=torch.bool)}
    video = torch.rand(3, 4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = discriminator(video, conditions)
        features, embedding = discriminator.features(video), discriminator.embed(conditions)
        summed = discriminator.linear(features).squeeze(1) + (features * embedding).sum(1)  # one joint score
        reversed_in_time = discriminator(video.flip(1), conditions)
    assert logits.shape == (3, 2)  # one column per branch: each gets its own hinge term
    torch.testing.assert_close(logits.sum(1) - discriminator.linear.bias, summed)
    # the frame branch sees every frame, in no order: playing the clip backwards changes only the clip branch
    torch.testing.assert_close(reversed_in_time[:, 1], logits[:, 1])
    assert not torch.allclose(reversed_in_time[:, 0], logits[:, 0])
    # each branch reads the caption through its own embedder: changing the clip branch's leaves the frame score
    with torch.no_grad():
        for parameter in discriminator.embedder[0].parameters():
            parameter.add_(0.5)
        changed = discriminator(video, conditions)
    torch.testing.assert_close(changed[:, 1], logits[:, 1])
    assert not torch.allclose(changed[:, 0], logits[:, 0])


def test_frame_branch_glimpse_judges_the_object_wherever_it_is_in_the_frame():
    torch.manual_seed(0)
    spec = {**SPEC, "modalities": ["video", "text"], "num_frames": 4, "video_size": 32}
    model = tiny(spec, condition="text", output="video",
                 network={"discriminator_frames": 0, "discriminator_glimpses": 4})
    discriminator = model.discriminator.eval()
    assert discriminator.trunk.glimpse_size == 16  # the data's image size
    conditions = {"text": torch.randint(0, 12, (2, 6)), "text_mask": torch.ones(2, 6, dtype=torch.bool)}
    sprite = torch.rand(2, 4, 1, 12, 12) * 2 - 1
    video = -torch.ones(2, 4, 1, 32, 32)
    video[..., 2:14, 3:15] = sprite
    moved = -torch.ones(2, 4, 1, 32, 32)
    moved[..., 17:29, 15:27] = sprite  # the same object elsewhere on the canvas
    with torch.no_grad():
        here, there = discriminator(video, conditions), discriminator(moved, conditions)
        changed = video.clone()
        changed[..., 5, 6] = 1.0  # a stroke of the object changes what the frame branch sees
        stroke = discriminator(changed, conditions)
    torch.testing.assert_close(there[:, 1], here[:, 1])  # the frame branch reads the same glimpse
    assert not torch.allclose(there[:, 0], here[:, 0])  # the clip branch sees where it is
    assert not torch.allclose(stroke[:, 1], here[:, 1])
    both = tiny(spec, condition="text", output="video",
                network={"discriminator_frames": 2, "discriminator_glimpses": 2}).discriminator
    assert both(video, conditions).shape == (2, 3)  # clip, whole frames and glimpses, each scored apart
    with pytest.raises(ValueError, match="glimpse_size"):
        tiny(spec, condition="text", output="video", network={"discriminator_glimpses": 2, "glimpse_size": 64})
    with pytest.raises(ValueError, match="discriminator_glimpses"):
        tiny(spec, condition="text", output="video", network={"discriminator_glimpses": 5})


def test_warp_generator_reads_the_caption_apart_for_content_and_motion():
    torch.manual_seed(0)
    spec = {**SPEC, "modalities": ["video", "text"], "num_frames": 4, "video_size": 32}
    generator = tiny(spec, condition="text", output="video").generator.eval()
    conditions = {"text": torch.randint(0, 12, (3, 6)), "text_mask": torch.ones(3, 6, dtype=torch.bool)}
    z = torch.randn(3, 8)
    with torch.no_grad():
        torch.nn.init.normal_(generator.motion[-1].weight)  # a fresh motion head moves nothing
        before, content_before = generator(z, conditions), generator.content(z, conditions)
        for parameter in generator.motion_embedder.parameters():
            parameter.add_(0.5)
        after, content_after = generator(z, conditions), generator.content(z, conditions)
    # the content moves in whole pixels, and the motion's embedder moves the clip but leaves the content image
    assert not torch.allclose(before[:, 0], before[:, -1]) and not torch.allclose(before, after)
    torch.testing.assert_close(content_after, content_before)
    content_ids = {id(p) for p in generator.content.embedder.parameters()}
    assert content_ids.isdisjoint(id(p) for p in generator.motion_embedder.parameters())
    with pytest.raises(ValueError, match="motion_embedder"):
        type(generator)(8, 1, 4, 16, 8, generator.content.embedder, 8)


class SaveWeights(L.Callback):
    """Each DDP rank writes its players' live weights (after its last batch) and the averaged ones (after the EMA
    callback, listed before this one, copied them in when training ended), to check they stayed identical."""

    def __init__(self, folder: str) -> None:
        self.folder, self.live = folder, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.live = {name: value.clone() for name, value in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"live": self.live, "ema": pl_module.state_dict()}, f"{self.folder}/rank{trainer.global_rank}.pt")


def test_ddp_two_cpu_processes_without_unused_parameter_search(tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 6, "accelerator": "cpu", "devices": 2,
                    "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                                 "init_args": {"find_unused_parameters": False}},
                    "logger": False, "enable_progress_bar": False, "limit_val_batches": 1,
                    "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "mmgen_lightning.callbacks.EMA",
                                   "init_args": {"decay": 0.5, "warmup": True, "use_buffers": False}},
                                  {"class_path": "tests.models.test_gan.SaveWeights",
                                   "init_args": {"folder": str(tmp_path)}},
                                  {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "mmgen_lightning.models.gan.ConditionalGAN",
                  "init_args": {"condition": "text", "network": TINY,
                                "objective": {"r1_gamma": 1.0, "accumulate_grad_batches": 2}}},
        "data": {"class_path": "tests.conftest.ToyDataModule",
                 "init_args": {"modalities": ["image", "text"], "size": 64, "batch_size": 4}},
    }
    fit_two_ranks_in_subprocess(config, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # each rank saw different data; averaged gradients keep both players (and the EMA) identical
    for part in ("live", "ema"):
        for name, value in ranks[0][part].items():
            torch.testing.assert_close(ranks[1][part][name], value, msg=f"{part}.{name}")
    assert not torch.equal(ranks[0]["live"]["generator.project.weight"], ranks[0]["ema"]["generator.project.weight"])
    assert load_generator(tmp_path / "ckpt" / "last.ckpt").discriminator_steps == 3  # 6 micro-batches / 2


def test_contrastive_term_makes_the_discriminator_pick_each_image_caption_and_reaches_the_generator():
    from mmgen_lightning.losses import symmetric_info_nce

    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=64, batch_size=16)
    model = tiny(datamodule.data_spec, condition="text", objective={"contrastive_weight": 1.0},
                 optimization={"group_lr": {"discriminator": 2e-3}})
    batch = next(iter(DataLoader(datamodule.dataset("val"), batch_size=16)))  # 4 captions, 4 images each
    conditions = model.condition_inputs(batch)

    def picking_loss() -> float:
        d = model.discriminator
        with torch.no_grad():
            return symmetric_info_nce(*d.contrast(d.features(batch["image"]), d.embed(conditions)), 10.0).item()

    # the term is part of both players' losses, and the generator's reaches the generator's weights
    objective = model.config.objective
    d_terms = discriminator_objective(model.generator, model.discriminator, batch["image"], model.latents(16),
                                      conditions, objective)
    assert torch.allclose(d_terms["loss"], d_terms["adversarial"] + d_terms["contrastive"])
    g_terms = generator_objective(model.generator, model.discriminator, model.latents(16), conditions, objective)
    model.generator.zero_grad()
    g_terms["contrastive"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    before = picking_loss()  # about log 16: no caption preferred
    fit(model, datamodule, max_epochs=10, limit_val_batches=0)
    # the floor is log 4 (each caption fits 4 images equally): the discriminator's features now tell captions apart
    assert before > 2.5 and picking_loss() < 2.0, (before, picking_loss())
    plain = tiny(datamodule.data_spec, condition="text")
    assert "contrastive" not in generator_objective(plain.generator, plain.discriminator, plain.latents(16), conditions,
                                                    plain.config.objective)
    with pytest.raises(ValueError, match=r"^objective.contrastive_weight needs a condition; got condition=None$"):
        tiny(datamodule.data_spec, condition=None, objective={"contrastive_weight": 1.0})
    video = {**SPEC, "modalities": ["video", "text"], "num_frames": 4, "video_size": 16}
    with pytest.raises(ValueError, match=r"^objective.contrastive_weight needs output='image', got output='video'$"):
        tiny(video, condition="text", output="video", objective={"contrastive_weight": 1.0})


def test_frozen_aligner_guides_the_generator_and_stays_out_of_the_checkpoint(tmp_path):
    from mmgen_lightning.models.aligner import Aligner

    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text", "label"], size=16, batch_size=8)
    tiny_aligner = {"network": {"embed_dim": 8, "width": 16, "encoder_layers": 1, "text_layers": 1, "num_heads": 2}}
    for name, modalities in (("aligner", ["image", "text"]), ("label_aligner", ["image", "label"])):
        fit(Aligner(datamodule.data_spec, modalities=modalities, **tiny_aligner), datamodule, max_steps=1,
            limit_val_batches=0, default_root_dir=str(tmp_path),
            callbacks=[ModelCheckpoint(dirpath=str(tmp_path / name), save_last=True)], enable_checkpointing=True)
    model = tiny(datamodule.data_spec, condition="text",
                 objective={"aligner_path": str(tmp_path / "aligner" / "last.ckpt"), "aligner_weight": 1.0})
    fit(model, datamodule, max_steps=2, limit_val_batches=0, default_root_dir=str(tmp_path), enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "gan"), save_last=True)])
    batch = next(iter(DataLoader(datamodule.dataset("val"), batch_size=8)))
    terms = generator_objective(model.generator, model.discriminator, model.latents(8), model.condition_inputs(batch),
                                model.config.objective, model.aligner_term)
    assert "aligner" in terms and torch.isfinite(terms["aligner"])
    model.generator.zero_grad()
    terms["aligner"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert all(p.grad is None for p in model._aligner[0].parameters())  # frozen
    assert not any("aligner" in key for key in model.state_dict())
    (tmp_path / "aligner" / "last.ckpt").unlink()  # the GAN's checkpoint does not need it to load
    assert load_generator(tmp_path / "gan" / "last.ckpt").generate(
        {k: batch[k][:1] for k in ("text", "text_mask")}, 2)["image"].shape == (2, 1, 16, 16)
    wrong = tiny(datamodule.data_spec, condition="text",
                 objective={"aligner_path": str(tmp_path / "label_aligner" / "last.ckpt"), "aligner_weight": 1.0})
    with pytest.raises(ValueError, match="label_aligner/last.ckpt: an Aligner that does not align the GAN's 'text'"):
        fit(wrong, datamodule, max_steps=1, limit_val_batches=0)


def test_aligner_term_reads_an_audio_condition_beside_its_log_mel():
    from mmgen_lightning.models.aligner import Aligner

    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "audio"], size=8, batch_size=4)
    model = tiny(datamodule.data_spec, condition="audio")
    aligner = Aligner(datamodule.data_spec, modalities=["image", "audio"], network={
        "embed_dim": 8, "width": 16, "encoder_layers": 1, "num_heads": 2, "n_mels": 16}).requires_grad_(False)
    batch = next(iter(DataLoader(datamodule.dataset("train"), batch_size=4)))
    conditions = model.condition_inputs(batch)
    assert sorted(conditions) == ["audio", "log_mel"]  # the embedders read log_mel, the aligner the clip
    fake = model.generator(model.latents(4), conditions)
    assert torch.isfinite(aligner_loss(aligner, fake, conditions, condition="audio", output="image"))

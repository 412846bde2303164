"""Captioner: masks and caches by perturbation, decoding modes against each other and against the
model's own likelihood, a tiny learning test, checkpoints, pretrained parts, bf16, the option groups."""

import copy
import inspect
import math

import lightning as L
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from mmgen_lightning.batch import check_batch
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.captioner import (PAD_ID, Captioner, CaptionerSampling, find_caption_parser,
                                              states_every_attribute)
from tests.conftest import WORDS, ToyDataModule, fit

VIDEO_SPEC = {"dataset": "toy", "modalities": ["video", "text"], "image_size": 16, "image_channels": 1,
              "num_frames": 4, "vocab_size": 12, "max_text_length": 8}


TINY_NETWORK = {"width": 32, "encoder_layers": 1, "decoder_layers": 2, "dropout": 0.0, "n_mels": 16, "audio_frames": 8}


def tiny(spec, network: dict | None = None, **kwargs) -> Captioner:
    """A tiny Captioner; ``network``'s entries are laid over TINY_NETWORK's."""
    return Captioner(spec, network={**TINY_NETWORK, **(network or {})}, **kwargs)


def random_batch(spec, batch_size=3, length=8, seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(4, spec["vocab_size"], (batch_size, length), generator=generator)
    text[:, 0] = 1
    return {"video": torch.rand(batch_size, spec["num_frames"], 1, 16, 16, generator=generator) * 2 - 1,
            "text": text, "text_mask": torch.ones_like(text, dtype=torch.bool)}


@pytest.fixture(scope="module")
def trained():
    """A captioner that learned the toy data (class k = bright quadrant k -> "class <word k>")."""
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=128)
    model = tiny(datamodule.data_spec, network={"decoder_layers": 1}, optimization={"lr": 3e-3, "warmup_steps": 10},
                 validation={"bleu_n_gram": 2})
    fit(model, datamodule, max_epochs=10, limit_val_batches=0)
    val = datamodule.dataset("val")
    images = torch.stack([val[i]["image"] for i in range(8)])
    return model.eval(), images


# --- masks ----------------------------------------------------------------------------------------
def test_changing_a_future_token_leaves_earlier_logits_alone():
    model = tiny(VIDEO_SPEC)
    batch = random_batch(VIDEO_SPEC)
    with torch.no_grad():
        before = model(batch)
        for k in (2, 5):
            changed = dict(batch, text=batch["text"].clone())
            changed["text"][:, k] = (changed["text"][:, k] + 1 - 4) % (VIDEO_SPEC["vocab_size"] - 4) + 4
            after = model(changed)
            torch.testing.assert_close(after[:, :k], before[:, :k], rtol=0, atol=1e-6)  # rows < k never see token k
            assert (after[:, k:] - before[:, k:]).abs().amax() > 1e-4


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_padding_changes_neither_real_logits_nor_the_loss():
    model = tiny(VIDEO_SPEC)
    batch = random_batch(VIDEO_SPEC)
    batch["text_mask"][0, 5:] = False  # row 0: 4 tokens, then padding
    batch["text_mask"][1, 3:] = False
    batch["text"][~batch["text_mask"]] = PAD_ID
    scrambled = dict(batch, text=batch["text"].clone())
    scrambled["text"][~batch["text_mask"]] = torch.randint(4, 12, (int((~batch["text_mask"]).sum()),))
    with torch.no_grad():
        logits, logits_scrambled = model(batch), model(scrambled)
        real = batch["text_mask"][:, :-1]
        torch.testing.assert_close(logits_scrambled[real], logits[real], rtol=0, atol=1e-6)
        loss = model.training_step(batch, 0)
        assert torch.equal(model.training_step(scrambled, 0), loss)
    # the loss is the mean NLL over real next-tokens only
    targets = batch["text"][:, 1:]
    keep = batch["text_mask"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(loss, nll[keep].mean())


# --- decoding -------------------------------------------------------------------------------------
def test_cached_and_uncached_decoding_give_the_same_tokens(trained):
    model, images = trained
    for knobs in ({}, {"num_beams": 3}, {"min_new_tokens": 4, "repetition_penalty": 1.3}):
        cached = model.generate({"image": images}, 8, use_cache=True, **knobs)["text"]
        uncached = model.generate({"image": images}, 8, use_cache=False, **knobs)["text"]
        assert torch.equal(cached, uncached), knobs
    # an untrained decoder, kept from repeating itself: every step's choice rests on the cached past
    model = tiny(VIDEO_SPEC, network={"decoder_layers": 2})
    video = random_batch(VIDEO_SPEC, batch_size=4)["video"]
    knobs = {"min_new_tokens": 7, "no_repeat_ngram_size": 1}
    cached = model.generate({"video": video}, 4, **knobs)["text"]
    assert len(cached[:, 1:].unique()) > 4
    assert torch.equal(cached, model.generate({"video": video}, 4, use_cache=False, **knobs)["text"])


def test_beam_search_of_width_one_is_greedy(trained):
    model, images = trained
    greedy = model.generate({"image": images}, 8)["text"]
    assert torch.equal(model.generate({"image": images}, 8, num_beams=1)["text"], greedy)


def test_beam_search_is_batched_and_at_least_as_likely_as_greedy(trained):
    model, images = trained
    noisy = (images + 0.8 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    greedy = model.generate({"image": noisy}, 8)["text"]
    beams = model.generate({"image": noisy}, 8, num_beams=4, length_penalty=0.0)["text"]
    for row in range(0, 8, 3):  # each row decodes the same alone as in the batch
        alone = model.generate({"image": noisy[row:row + 1]}, 1, num_beams=4, length_penalty=0.0)["text"]
        assert torch.equal(alone[0], beams[row])

    def likelihood(text):
        return model.log_likelihood({"image": noisy, "text": text, "text_mask": text != PAD_ID}).log_prob

    assert (likelihood(beams) >= likelihood(greedy) - 1e-4).all()


def test_sampling_and_length_controls(trained):
    model, images = trained
    first = model.generate({"image": images}, 8, temperature=1.5, top_k=5, top_p=0.95, seed=3)["text"]
    again = model.generate({"image": images}, 8, temperature=1.5, top_k=5, top_p=0.95, seed=3)["text"]
    assert torch.equal(first, again)
    check_batch({"text": first, "text_mask": first != PAD_ID})
    longer = model.generate({"image": images}, 8, min_new_tokens=5, no_repeat_ngram_size=1)
    lengths = longer["text_mask"].sum(1)
    assert (lengths >= 6).all()  # [BOS] + at least 5 new tokens
    for row in longer["text"].tolist():
        row = [t for t in row if t != PAD_ID]
        assert len(row) == len(set(row)), row  # no token twice
    short = model.generate({"image": images}, 8, max_new_tokens=1)["text"]
    assert short.shape == (8, model.spec("max_text_length")) and (short[:, 2:] == PAD_ID).all()
    with pytest.raises(ValueError, match=r"top_p must be float in \(0, 1\], got 1.5"):  # the declared knob
        model.generate({"image": images}, 8, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match=r"max_new_tokens must be in \[1, 5\], got 9"):
        model.generate({"image": images}, 8, max_new_tokens=9)
    with pytest.raises(ValueError, match="cannot generate audio->text; it serves: image->text"):
        model.generate({"audio": torch.zeros(8, 2000)}, 8)


# --- learning, metrics, checkpoints ---------------------------------------------------------------
def test_a_tiny_captioner_learns_the_toy_captions(trained):
    model, images = trained
    captions = model.tokenizer.decode(model.generate({"image": images}, 8)["text"])
    assert captions == [f"class {WORDS[i % 4]}" for i in range(8)]


def test_validation_logs_perplexity_bleu_chrf_and_attributes(trained):
    model, _ = trained
    datamodule = ToyWithParser(modalities=["image", "text"], size=32)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    assert model.parse_caption is parse_caption
    assert metrics["val/perplexity"] < 1.5 and metrics["val/token_accuracy"] == 1.0
    assert metrics["val/bleu"] == pytest.approx(1.0) and metrics["val/chrf"] == pytest.approx(1.0)
    assert metrics["val/all_attributes_correct"] == 1.0


def test_states_every_attribute_compares_only_stated_attributes():
    parse = {"a red circle moving up": {"color": "red", "shape": "circle", "motion": "up"},
             "a red circle": {"color": "red", "shape": "circle"}, "a blue circle": {"color": "blue", "shape": "circle"},
             "noise": None}.get
    correct = states_every_attribute(["a red circle", "a red circle", "a red circle"],
                                     ["a red circle moving up", "a blue circle", "noise"], parse)
    assert correct.tolist() == [False, False]  # motion missing; wrong colour; unreadable reference skipped
    correct = states_every_attribute(["a red circle"], ["a red circle moving up"], parse, ["color", "shape"])
    assert correct.tolist() == [True]


def test_checkpoint_reloads_with_weights_only(trained, tmp_path):
    model, images = trained
    model = copy.deepcopy(model).train()
    trainer = fit(model, ToyDataModule(size=16), max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.save_checkpoint(tmp_path / "captioner.ckpt")
    loaded = load_generator(tmp_path / "captioner.ckpt")
    assert isinstance(loaded, Captioner) and loaded.tokenizer is not None
    torch.testing.assert_close(loaded.generate({"image": images}, 8)["text"], model.eval().generate({"image": images}, 8)["text"])


# --- other condition modalities, pretrained parts, precision -------------------------------------
def test_audio_and_video_encoders_give_tokens_and_maps():
    datamodule = ToyDataModule(modalities=["audio", "text"])
    audio_model = tiny(datamodule.data_spec)
    audio = torch.randn(2, 2000).clamp(-1, 1)
    assert audio_model.encode({"audio": audio}).shape == (2, audio_model.encoder.grid[0], 32)
    video_model = tiny(VIDEO_SPEC)
    batch = random_batch(VIDEO_SPEC, batch_size=2)
    assert video_model.encode(batch).shape == (2, 4 * 4 * 4, 32) and video_model.encoder.grid == (4, 4, 4)
    maps = video_model.cross_attention_maps(batch, batch["text"])
    assert maps.shape == (2, 7, 64)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 7))
    assert video_model.decoder.config._attn_implementation == "sdpa"  # restored after drawing the maps


def moving_square(direction: str, frames: int = 4, size: int = 32) -> torch.Tensor:
    """``F,1,size,size``: a bright 4x4 square on black sliding left to right or top to bottom."""
    video = -torch.ones(frames, 1, size, size)
    for frame in range(frames):
        along, across = 4 + 2 * frame, 20
        row, col = (along, across) if direction == "down" else (across, along)
        video[frame, 0, row:row + 4, col:col + 4] = 1.0
    return video


def test_glimpses_follow_the_object_and_keep_its_track():
    spec = {**VIDEO_SPEC, "video_size": 32}
    model = tiny(spec, network={"glimpse_size": 8, "patch_size": 4})
    videos = torch.stack([moving_square("right"), moving_square("down")])
    windows, motion, centres = model.encoder.windows(videos)
    assert windows.shape == motion.shape == (2, 4, 1, 8, 8)
    # every glimpse holds the whole square at its centre, in every frame
    assert torch.equal(windows, windows[:1, :1].expand_as(windows))
    assert torch.equal(windows[0, 0, 0, 2:6, 2:6], torch.ones(4, 4)) and windows.sum() == -2 * 4 * (64 - 32)
    # the track moves the way the square does; the derivative shows the square's leading edge
    assert (centres[0, 1:, 1] > centres[0, :-1, 1]).all() and (centres[0, :, 0] == centres[0, 0, 0]).all()
    assert (centres[1, 1:, 0] > centres[1, :-1, 0]).all()
    assert motion[0, 1, 0, :, 6:].gt(0).any() and motion[0, 1, 0, :, :2].lt(0).any()
    batch = {"video": videos, "text": random_batch(spec, batch_size=2)["text"]}
    assert model.encode(batch).shape == (2, 4 * 2 * 2, 32) and model.encoder.grid == (4, 2, 2)
    assert model.cross_attention_maps(batch, batch["text"]).shape == (2, 7, 16)
    with pytest.raises(ValueError, match="glimpse_size is only used with modality 'video'"):
        tiny(ToyDataModule().data_spec, network={"glimpse_size": 8})
    with pytest.raises(ValueError, match="glimpse_size must be in \\[1, 32\\]"):
        tiny(spec, network={"glimpse_size": 40})


def test_frozen_pretrained_image_encoder_and_text_decoder_from_local_folders(tmp_path):
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    spec = datamodule.data_spec
    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=48)).save_pretrained(tmp_path / "vit")
    GPT2LMHeadModel(GPT2Config(vocab_size=spec["vocab_size"], n_positions=8, n_embd=32, n_layer=1,
                               n_head=2)).save_pretrained(tmp_path / "gpt2")
    model = tiny(spec, image_encoder={"path": str(tmp_path / "vit")}, text_decoder={"path": str(tmp_path / "gpt2")})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("encoder.backbone") for name in trainable)
    assert "encoder.project.weight" in trainable
    decoder_trainable = {name for name in trainable if name.startswith("decoder.")}
    assert decoder_trainable and all("crossattention" in n or "ln_cross_attn" in n for n in decoder_trainable)
    trainer = fit(model, datamodule, max_steps=2, limit_val_batches=0, default_root_dir=tmp_path)
    assert not model.encoder.backbone.training  # a frozen backbone keeps dropout off while training
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    maps = model.cross_attention_maps({"image": images}, model.generate({"image": images}, 2)["text"])
    assert model.encoder.grid == (4, 4) and model.encoder.num_prefix_tokens == 1 and maps.shape[-1] == 17
    trainer.save_checkpoint(tmp_path / "pretrained.ckpt")
    for folder in ("vit", "gpt2"):  # the checkpoint alone rebuilds both parts
        for file in (tmp_path / folder).iterdir():
            file.unlink()
    loaded = load_generator(tmp_path / "pretrained.ckpt")
    torch.testing.assert_close(loaded.generate({"image": images}, 2)["text"], model.eval().generate({"image": images}, 2)["text"])


def test_bad_arguments_are_named(tmp_path):
    spec = ToyDataModule().data_spec
    with pytest.raises(ValueError, match="modality: unknown 'smell'; allowed: image, audio, video"):
        Captioner(spec, modality="smell")
    image_and_text = ToyDataModule(modalities=["image", "text"]).data_spec
    with pytest.raises(ValueError, match="condition: 'audio' is not carried by the data; the datamodule's "
                                         "modalities are image, text"):
        Captioner(image_and_text, modality="audio")
    with pytest.raises(FileNotFoundError, match="text_decoder.path"):
        Captioner(spec, text_decoder={"path": str(tmp_path)})
    GPT2LMHeadModel(GPT2Config(vocab_size=99, n_positions=8, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="text_decoder.path: the decoder has 99 tokens"):
        Captioner(spec, text_decoder={"path": str(tmp_path)})


@pytest.mark.parametrize("options, message", [
    ({"network": {"width": 30}}, r"network.width must be divisible by num_heads \(4\), got 30"),
    ({"network": {"hidden": 8}}, r"network: unknown option\(s\) hidden; allowed: width, encoder_layers"),
    ({"objective": {"label_smoothing": 1.0}}, r"objective.label_smoothing must be in \[0, 1\), got 1.0"),
    ({"optimization": {"lr": 0}}, r"optimization.lr must be > 0, got 0"),
    ({"sampling": {"top_p": 1.5}}, r"sampling.top_p must be float in \(0, 1\], got 1.5"),
    ({"sampling": {"min_new_tokens": 4, "max_new_tokens": 2}}, r"sampling.min_new_tokens must be <= max_new_tokens"),
    ({"validation": {"num_beams": 0}}, r"validation.num_beams must be >= 1, got 0"),
    ({"text_decoder": {"freeze": False}}, r"text_decoder.path must name a local save_pretrained folder, got None"),
    ({"modality": "audio", "objective": {"shift_augment": 2}}, r"objective.shift_augment must be 0 for 'audio', got 2"),
    ({"modality": "audio", "image_encoder": {"path": "vit"}}, r"image_encoder is only used with modality 'image'"),
])
def test_each_option_group_checks_itself_and_names_the_field(options, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Captioner(ToyDataModule(modalities=["image", "audio", "text"]).data_spec, **options)


def test_the_flat_options_of_old_checkpoints_move_into_their_groups():
    flat = {"modality": "image", "width": 32, "label_smoothing": 0.1, "lr": 2e-3, "warmup_steps": 2, "val_num_beams": 3,
            "bleu_n_gram": 2, "scored_attributes": None, "image_encoder_path": "vit", "freeze_image_encoder": False,
            "image_encoder_config": None, "text_decoder_path": None, "freeze_text_decoder": True,
            "text_decoder_config": None}
    assert Captioner.legacy.hyperparameters(Captioner, flat) == {
        "modality": "image", "network": {"width": 32}, "objective": {"label_smoothing": 0.1},
        "optimization": {"lr": 2e-3, "warmup_steps": 2},
        "validation": {"num_beams": 3, "bleu_n_gram": 2, "scored_attributes": None},
        "image_encoder": {"path": "vit", "freeze": False, "config": None}}  # no text_decoder block: none was used


def test_generate_fills_every_knob_not_given_from_the_sampling_group(trained):
    model, images = trained
    knobs = inspect.signature(Captioner.sample).parameters  # the group holds exactly sample()'s defaults
    assert {name: knobs[name].default for name in CaptionerSampling.field_names()} == CaptionerSampling().to_dict()
    short = tiny(model.hparams.data_spec, network={"decoder_layers": 1}, sampling={"max_new_tokens": 1})
    short.load_state_dict(model.state_dict())
    short.tokenizer = model.tokenizer
    captions = short.generate({"image": images}, 8)["text"]
    assert (captions[:, 2:] == PAD_ID).all() and torch.equal(short.predict_step({"image": images}, 0)["text"], captions)
    given = short.generate({"image": images}, 8, max_new_tokens=4)["text"]
    assert torch.equal(given, model.generate({"image": images}, 8, max_new_tokens=4)["text"])


def test_the_optimiser_spares_positions_biases_and_norms_from_weight_decay():
    model = tiny(VIDEO_SPEC)
    configured = model.configure_optimizers()
    decayed, spared = configured["optimizer"].param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    assert "decoder.transformer.wpe.weight" in {names[id(p)] for p in spared["params"]}
    assert all(p.ndim >= 2 and "position" not in names[id(p)] for p in decayed["params"])
    assert configured["optimizer"].defaults["betas"] == (0.9, 0.98) and model.config.optimization.schedule == "cosine"


def test_bf16_mixed_precision_trains_and_validates():
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["audio", "text"], size=16)
    model = tiny(datamodule.data_spec)
    trainer = fit(model, datamodule, max_steps=2, precision="bf16-mixed", limit_val_batches=1, log_every_n_steps=1)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert math.isfinite(trainer.callback_metrics["val/perplexity"].item())


# a datamodule with a module-level caption parser, as the built-in sources have
def parse_caption(text: str) -> dict | None:
    words = text.split()
    return {"digit": WORDS.index(words[1])} if len(words) == 2 and words[1] in WORDS else None


class ToyWithParser(ToyDataModule):
    pass


def test_the_caption_parser_is_found_next_to_the_datamodule():
    assert find_caption_parser(ToyWithParser()) is parse_caption
    assert find_caption_parser(ToyDataModule()) is None

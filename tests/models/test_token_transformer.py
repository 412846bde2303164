"""TokenTransformer: causality, condition dropout and its targets, the objective by hand, classifier-free
guidance at scale 1 against plain sampling, cached against uncached decoding, the sampling defaults, the
frozen stage 1 saved with stage 2, errors of the option groups, and a tiny learning test in both
directions."""

import dataclasses
import math
import shutil

import pytest
import torch

from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.token_transformer import TokenSampling, TokenTransformer, classifier_free_guidance
from mmgen_lightning.models.vqvae import VQVAE
from mmgen_lightning.objectives.tokens import next_token_targets, token_stream_objective
from tests.conftest import WORDS, ToyDataModule, fit

TINY = {"network": {"width": 32, "num_layers": 2, "num_heads": 2, "dropout": 0.0},
        "optimization": {"warmup_steps": 10}}


@pytest.fixture(scope="module")
def datamodule() -> ToyDataModule:
    return ToyDataModule(modalities=["image", "text"], size=128)


@pytest.fixture(scope="module")
def vqvae_path(tmp_path_factory, datamodule) -> str:
    """A stage-1 checkpoint of a tiny VQVAE that learned the toy images (4x4 codes of 16)."""
    torch.manual_seed(0)
    vqvae = VQVAE(datamodule.data_spec, network={"num_codes": 16, "code_dim": 8, "width": 16},
                  optimization={"lr": 3e-3})
    trainer = fit(vqvae, datamodule, max_epochs=4, limit_val_batches=0)
    path = tmp_path_factory.mktemp("stage1") / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def tiny(datamodule, vqvae_path, optimization: dict | None = None, **groups) -> TokenTransformer:
    """A tiny TokenTransformer; ``optimization`` entries are laid over TINY's."""
    model = TokenTransformer(datamodule.data_spec, vqvae_checkpoint=vqvae_path, network=TINY["network"],
                             optimization={**TINY["optimization"], **(optimization or {})}, **groups)
    model.tokenizer = datamodule.tokenizer
    return model


def conditions(datamodule, count=4):
    val = datamodule.dataset("val")
    items = [val[i] for i in range(count)]
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "text", "text_mask", "attributes")}


def test_condition_dropout_nulls_whole_conditions_and_is_not_scored(datamodule, vqvae_path):
    model = tiny(datamodule, vqvae_path, objective={"condition_dropout": 0.5})
    embedding = model.transformer.embedding
    batch = conditions(datamodule, 8)
    codes_first = torch.tensor([False, True] * 4)
    ids = model.stream(batch, codes_first)
    dropped_ids, dropped = embedding.drop_condition(ids, codes_first, torch.tensor([True, True] + [False] * 6))
    layout = model.layout
    assert (dropped_ids[0, layout.text_slots(False)] == layout.null_id).all()
    assert (dropped_ids[1, layout.code_slots(True)] == layout.null_id).all()
    assert torch.equal(dropped_ids[2:], ids[2:]) and torch.equal(dropped_ids[:2, -1], ids[:2, -1])
    targets = next_token_targets(layout, ids, codes_first, dropped)
    assert (targets["text"][0] == -100).all()  # row 0 lost its caption: its caption is not a target
    assert (targets["codes"][0] != -100).sum() == layout.num_codes_per_sample
    assert (targets["codes"][1] == -100).all() and (targets["text"][1] != -100).any()
    model.train()
    _, drawn = embedding.drop_condition(ids.repeat(50, 1), codes_first.repeat(50))
    assert 0.35 < drawn.float().mean() < 0.65
    model.eval()
    assert not embedding.drop_condition(ids, codes_first)[1].any()


def test_the_objective_is_the_weighted_next_token_nll_of_each_segment(datamodule, vqvae_path):
    model = tiny(datamodule, vqvae_path, objective={"loss_weights": {"image": 0.25}}).eval()
    codes_first = torch.tensor([False, True, False])
    ids = model.stream(conditions(datamodule, 3), codes_first)
    out = model.losses(conditions(datamodule, 3), codes_first)
    with torch.no_grad():
        logits, _ = model.transformer(ids[:, :-1], codes_first)
    log_p = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # B,S-1 of every next token
    layout, nll = model.layout, {}
    for name, slots in (("text", layout.text_slots), ("codes", layout.code_slots)):
        scored = torch.zeros_like(log_p, dtype=torch.bool)
        for row, first in enumerate(codes_first.tolist()):
            scored[row, slots(first).start - 1: slots(first).stop - 1] = True  # predicted from the slot before
        scored &= ~((name == "text") & (ids[:, 1:] == layout.pad_id))  # padding after [EOS] is not text
        nll[name] = -log_p[scored].mean()
    assert torch.allclose(out["text"], nll["text"], atol=1e-5) and torch.allclose(out["codes"], nll["codes"], atol=1e-5)
    assert torch.allclose(out["loss"], nll["text"] + 0.25 * nll["codes"], atol=1e-5)
    assert model.loss_weights == {"text": 1.0, "codes": 0.25}
    again = token_stream_objective(model.transformer, ids, codes_first, {"text": 0.0, "codes": 1.0})
    assert torch.allclose(again["loss"], again["codes"]) and not math.isclose(out["loss"].item(), again["loss"].item())


def test_changing_a_later_slot_leaves_earlier_logits_alone(datamodule, vqvae_path):
    model = tiny(datamodule, vqvae_path).eval()
    codes_first = torch.tensor([False, True, False])
    ids = model.stream(conditions(datamodule, 3), codes_first)
    with torch.no_grad():
        before, _ = model.transformer(ids, codes_first)
        changed = ids.clone()
        changed[:, 9] = model.layout.text_vocab_size + 3
        after, _ = model.transformer(changed, codes_first)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:])


# --- sampling ---------------------------------------------------------------------------------------
def test_guidance_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([4.0, -5.0]))


@pytest.mark.parametrize("to", ["image", "text"])
def test_guidance_scale_one_equals_plain_sampling(datamodule, vqvae_path, to):
    torch.manual_seed(1)
    model = tiny(datamodule, vqvae_path, objective={"condition_dropout": 0.2})
    batch = conditions(datamodule, 6)
    given = {"text": batch["text"], "text_mask": batch["text_mask"]} if to == "image" else {"image": batch["image"]}
    plain = model.generate(given, 6, to=to, temperature=1.0, seed=3)
    guided = model.generate(given, 6, to=to, temperature=1.0, seed=3, guidance_scale=1.0)
    strong = model.generate(given, 6, to=to, temperature=1.0, seed=3, guidance_scale=4.0)
    assert torch.equal(plain[to], guided[to])
    assert not torch.equal(plain[to], strong[to])  # the unconditional pass does change the samples


@pytest.mark.parametrize("to", ["image", "text"])
def test_cached_decoding_equals_uncached(datamodule, vqvae_path, to):
    torch.manual_seed(2)
    model = tiny(datamodule, vqvae_path)
    batch = conditions(datamodule, 5)
    given = {"text": batch["text"], "text_mask": batch["text_mask"]} if to == "image" else {"image": batch["image"]}
    for knobs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 5, "top_p": 0.9, "guidance_scale": 2.0}):
        cached = model.generate(given, 5, to=to, seed=0, use_cache=True, **knobs)
        uncached = model.generate(given, 5, to=to, seed=0, use_cache=False, **knobs)
        assert torch.equal(cached[to], uncached[to])


def test_sampling_defaults_fill_in_knobs_not_given(datamodule, vqvae_path):
    torch.manual_seed(3)
    batch = conditions(datamodule, 4)
    given = {"text": batch["text"], "text_mask": batch["text_mask"]}
    model = tiny(datamodule, vqvae_path, sampling={"guidance_scale": 3.0, "top_k": 2})
    explicit = model.generate(given, 4, to="image", seed=0, guidance_scale=3.0, top_k=2)["image"]
    assert torch.equal(model.generate(given, 4, to="image", seed=0)["image"], explicit)
    # an explicit knob wins: guidance 1 and top-k over the whole vocabulary are plain sampling
    everything = model.layout.vocab_size
    overridden = model.generate(given, 4, to="image", seed=0, guidance_scale=1.0, top_k=everything)["image"]
    assert not torch.equal(overridden, explicit)
    model.config = dataclasses.replace(model.config, sampling=TokenSampling())
    assert torch.equal(model.generate(given, 4, to="image", seed=0)["image"], overridden)
    with pytest.raises(ValueError, match=r"^sampling: unknown option\(s\) beams; allowed: temperature"):
        tiny(datamodule, vqvae_path, sampling={"beams": 2})
    with pytest.raises(ValueError, match=r"^sampling.top_k must be int >= 1, got 0$"):
        tiny(datamodule, vqvae_path, sampling={"top_k": 0})


def test_samples_follow_the_batch_contract(datamodule, vqvae_path):
    model = tiny(datamodule, vqvae_path)
    batch = conditions(datamodule, 3)
    images = model.generate({"text": batch["text"], "text_mask": batch["text_mask"]}, 3, to="image", top_k=3)["image"]
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    text = model.generate({"image": batch["image"]}, 3, to="text")
    assert text["text"].shape == (3, datamodule.max_text_length) and (text["text"][:, 0] == 1).all()
    assert torch.equal(text["text_mask"], text["text"] != 0)
    after_eos = torch.cumsum(text["text"] == 2, 1) - (text["text"] == 2).long()
    assert (text["text"][after_eos > 0] == 0).all()  # only [PAD] after [EOS]
    assert model.generate({}, 2, to="image")["image"].shape == (2, 1, 16, 16)  # unconditional
    torch.manual_seed(0)
    predicted = model.predict_step(batch, 0)["image"]  # predict: the modality of each caption
    torch.manual_seed(0)
    assert torch.equal(predicted, model.generate({"text": batch["text"], "text_mask": batch["text_mask"]}, 3)["image"])


def test_trains_with_warm_up_cosine_adamw_that_spares_tables_and_stage_1(datamodule, vqvae_path):
    model = tiny(datamodule, vqvae_path)
    configured = model.configure_optimizers()
    decayed, spared = configured["optimizer"].param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0 and decayed["betas"] == (0.9, 0.98)
    assert all(names[id(p)].startswith("transformer.") for p in decayed["params"] + spared["params"])  # no VQVAE
    assert {names[id(p)] for p in spared["params"]} >= {"transformer.embedding.token.weight",
                                                        "transformer.blocks.wpe.weight"}
    assert all(p.ndim >= 2 and "embedding" not in names[id(p)] for p in decayed["params"])
    assert configured["lr_scheduler"]["scheduler"].get_last_lr()[0] == pytest.approx(1e-3 / 10)  # warm-up: 1 of 10


# --- errors and checkpoints -------------------------------------------------------------------------
def test_bad_arguments_are_named(datamodule, vqvae_path, tmp_path):
    with pytest.raises(ValueError, match="vqvae_checkpoint"):
        TokenTransformer(datamodule.data_spec)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        TokenTransformer(datamodule.data_spec, vqvae_checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="image_size"):
        TokenTransformer({**datamodule.data_spec, "image_size": 32}, vqvae_checkpoint=vqvae_path)
    with pytest.raises(ValueError, match=r"^objective.loss_weights: 'audio' is not a modality of this model"):
        tiny(datamodule, vqvae_path, objective={"loss_weights": {"audio": 1.0}})
    with pytest.raises(ValueError, match=r"^objective.loss_weights must hold weights >= 0"):
        tiny(datamodule, vqvae_path, objective={"loss_weights": {"image": -1.0}})
    with pytest.raises(ValueError, match=r"^objective.codes_first_fraction must be in \[0, 1\], got 1.5$"):
        tiny(datamodule, vqvae_path, objective={"codes_first_fraction": 1.5})
    with pytest.raises(ValueError, match=r"^network.width must be divisible by num_heads \(3\), got 32$"):
        TokenTransformer(datamodule.data_spec, vqvae_checkpoint=vqvae_path, network={"width": 32, "num_heads": 3})
    with pytest.raises(ValueError, match=r"^network: unknown option\(s\) layers; allowed: width"):
        TokenTransformer(datamodule.data_spec, vqvae_checkpoint=vqvae_path, network={"layers": 2})
    model = tiny(datamodule, vqvae_path, objective={"condition_dropout": 0.0})
    with pytest.raises(ValueError, match="text->image"):
        model.generate({}, 1, to="image")  # no [NULL] training, no unconditional direction
    with pytest.raises(ValueError, match="guidance_scale"):
        model.generate({"image": torch.zeros(1, 1, 16, 16)}, 1, to="text", guidance_scale=-1.0)


def test_learns_both_directions_and_reloads_without_the_stage1_file(datamodule, vqvae_path, tmp_path):
    torch.manual_seed(0)
    stage1 = tmp_path / "stage1.ckpt"
    shutil.copy(vqvae_path, stage1)
    model = tiny(datamodule, str(stage1), optimization={"lr": 5e-3}, objective={"condition_dropout": 0.1})
    frozen = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    # 24 epochs: after 16 the text -> image accuracy still ranged 0.13-0.81 over stage-1 and stage-2 seeds
    trainer = fit(model, datamodule, max_epochs=24, limit_val_batches=0)
    assert all(torch.equal(v, model.vqvae.state_dict()[k]) for k, v in frozen.items())  # stage 1 stayed frozen
    path = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(path)
    stage1.unlink()  # the stage-2 checkpoint carries the VQVAE's hyper-parameters and weights
    loaded = load_generator(path)
    assert loaded.hparams.vqvae_config["network"]["num_codes"] == 16  # stage 1's own option groups
    batch = conditions(datamodule, 16)
    label = batch["attributes"][:, 0]
    captions = loaded.tokenizer.decode(loaded.generate({"image": batch["image"]}, 16, to="text")["text"])
    assert sum(c == f"class {WORDS[k]}" for c, k in zip(captions, label.tolist())) >= 14
    images = loaded.generate({"text": batch["text"], "text_mask": batch["text_mask"]}, 16, to="image", seed=0)["image"]
    quadrants = images[:, 0].unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2)).flatten(1)  # B,4 (row-major)
    assert (quadrants.argmax(1) == label).float().mean() >= 0.6  # the brightest quadrant is the asked one (chance: 0.25)


def test_an_audio_vqvae_gives_text_to_audio_and_audio_to_text(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["audio", "text"], size=16)
    vqvae = VQVAE(datamodule.data_spec, modality="audio",
                  network={"quantizer": "fsq", "fsq_levels": [4, 4], "width": 16, "n_mels": 16, "audio_frames": 8})
    trainer = fit(vqvae, datamodule, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.save_checkpoint(tmp_path / "audio_vq.ckpt")
    model = tiny(datamodule, str(tmp_path / "audio_vq.ckpt"))
    assert model.condition_modalities == ("text", "audio") and model.layout.grid[0] == 1
    fit(model, datamodule, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    items = [datamodule.dataset("val")[i] for i in range(2)]
    text = {"text": torch.stack([i["text"] for i in items]), "text_mask": torch.stack([i["text_mask"] for i in items])}
    assert model.generate(text, 2, to="audio", guidance_scale=2.0)["audio"].shape == (2, 2000)
    audio = torch.stack([i["audio"] for i in items])
    assert model.generate({"audio": audio}, 2, to="text")["text"].shape == (2, datamodule.max_text_length)
    with pytest.raises(ValueError, match=r"^objective.shift_augment shifts images; it must be 0 for 'audio'"):
        tiny(datamodule, str(tmp_path / "audio_vq.ckpt"), objective={"shift_augment": 1})

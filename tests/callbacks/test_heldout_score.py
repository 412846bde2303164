"""HeldOutScoreCallback: judge-free held-out scores in [0, 1] logged against steps at its cadence; a reader that
knows the truth scores 1 and one that is wrong scores low, through the callback's own wiring; the numbers are
seeded, leave training's random stream alone, and are the same under 1 and 2 DDP processes; bad arguments,
data or models are refused in one line before training."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmgen_lightning.callbacks.heldout_score import HeldOutScoreCallback
from mmgen_lightning.metrics.emoji_tone import asked_tone_right
from mmgen_lightning.datamodules import EmojiDataModule, ScenesDataModule
from mmgen_lightning.datamodules.scenes import draw_scene, parse_scene_caption, render_scene
from mmgen_lightning.metrics.emoji_tone import TONE_COLOURS
from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.flow import FlowMatching

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ITEMS = 48
TINY_CAPTIONER = {"network": {"patch_size": 8, "stem": "patch", "width": 32, "encoder_layers": 1,
                              "decoder_layers": 1, "dropout": 0.0}, "optimization": {"warmup_steps": 0}}
TINY_ALIGNER = {"network": {"patch_size": 8, "stem": "patch", "embed_dim": 16, "width": 32, "encoder_layers": 1,
                            "text_layers": 1, "num_heads": 2}, "optimization": {"warmup_steps": 0}}


@pytest.fixture(scope="module")
def scenes():
    datamodule = ScenesDataModule(train_size=64, val_size=16, test_size=16, heldout_size=ITEMS, batch_size=16)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    # every toned figure keeps one tone out; the held-out names of people holding hands ask two tones
    figures = ["technologist", "vampire", "people holding hands", "red apple", "flag: Japan", "keycap: 7", "rocket"]
    datamodule = EmojiDataModule(modalities=["image", "text"], image_size=32, figures=figures, heldout_share=1.0,
                                 split_fractions=(0.5, 0.25, 0.25),
                                 cache_dir=str(tmp_path_factory.mktemp("emoji")), batch_size=4)
    datamodule.setup("fit")
    return datamodule


def fit(model, datamodule, callback, tmp_path: Path, max_steps: int = 4) -> list[dict]:
    """Fit ``max_steps`` steps validating every 2; the rows of eval/ numbers the CSV logger wrote."""
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, val_check_interval=2, limit_val_batches=1,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1,
                        callbacks=[callback])
    trainer.fit(model, datamodule=datamodule)
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return [{k: v for k, v in row.items() if k == "step" or k.startswith("eval/") and v} for row in rows
            if any(k.startswith("eval/") and v for k, v in row.items())]


@pytest.mark.parametrize("every, steps", [(1, ["1", "3"]), (2, ["3"])])
def test_captioner_logs_scene_accuracy_in_0_1_at_every_nth_validation(scenes, tmp_path, every, steps):
    torch.manual_seed(0)
    model = Captioner(scenes.data_spec, modality="image", **TINY_CAPTIONER)
    rows = fit(model, scenes, HeldOutScoreCallback("scene_captions", num_items=8, every_n_validations=every),
               tmp_path)
    assert [row["step"] for row in rows] == steps  # validations after steps 2 and 4 (logged as 1 and 3)
    kinds = {f"scene_accuracy_{k}" for k in ("single", "relation", "binding", "counting")}
    assert set(rows[0]) - {"step"} == {f"eval/image->text/heldout/{name}" for name in {"scene_accuracy"} | kinds}
    assert all(0 <= float(v) <= 1 for row in rows for k, v in row.items() if k != "step")


def test_aligner_and_flow_log_their_scores_in_0_1(scenes, emoji, tmp_path):
    torch.manual_seed(0)
    rows = fit(Aligner(scenes.data_spec, **TINY_ALIGNER), scenes,
               HeldOutScoreCallback("scene_hard_negatives", splits=["test", "heldout"], num_items=ITEMS),
               tmp_path / "aligner")
    names = {"hard_negative_accuracy", *(f"hard_negative_accuracy_{twin}"
                                         for twin in ("color_swap", "shape_swap", "relation_reversed"))}
    assert set(rows[0]) - {"step"} == {f"eval/image->text/{split}/{name}" for split in ("test", "heldout")
                                       for name in names}
    flow = FlowMatching(emoji.data_spec, condition="text", sampling={"steps": 2},
                        network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8})
    rows += fit(flow, emoji, HeldOutScoreCallback("emoji_tones", num_items=None, samples_per_item=2),
                tmp_path / "flow", max_steps=2)
    assert "eval/text->image/heldout/asked_tone" in rows[-1]
    assert all(0 <= float(v) <= 1 for row in rows for k, v in row.items() if k != "step")


# --- readers that know the truth, and readers that are wrong ----------------------------------------------
class ScenesOracle:
    """A stand-in model that knows every real render's scene (by its bytes): as a captioner it writes the
    scene's caption (``shift`` > 0: the caption of the image ``shift`` places on in the batch); as an aligner
    an image and a caption meet (cosine 1) exactly when the caption is the image's own (``sign`` -1: prefers
    any other caption)."""

    device = torch.device("cpu")

    def __init__(self, datamodule, shift: int = 0, sign: float = 1.0) -> None:
        self.tokenizer, self.shift, self.sign = datamodule.tokenizer, shift, sign
        dataset = datamodule.dataset("heldout")
        self.truth = {dataset[i]["image"].numpy().tobytes(): dataset.scene(i).text for i in range(len(dataset))}
        self.slots: dict[str, int] = {}

    def captions(self, images: torch.Tensor) -> list[str]:
        texts = [self.truth[image.numpy().tobytes()] for image in images]
        return texts[self.shift:] + texts[:self.shift]

    def generate(self, conditions, num_samples: int, to: str, **sampling) -> dict[str, torch.Tensor]:
        return {"text": self.tokenizer.encode(self.captions(conditions["image"]))["text"]}

    def slot(self, text: str) -> int:
        return self.slots.setdefault(text, len(self.slots))

    def embed(self, inputs, modality: str) -> torch.Tensor:
        return F.one_hot(torch.tensor([self.slot(t) for t in self.captions(inputs["image"])]), 4096).float()

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        return self.sign * F.one_hot(torch.tensor([self.slot(t) for t in captions]), 4096).float()


def test_a_captioner_of_the_true_captions_scores_one_and_of_shuffled_ones_low(scenes):
    callback = HeldOutScoreCallback("scene_captions", num_items=ITEMS, batch_size=16)
    right = callback.measure(ScenesOracle(scenes), scenes)
    wrong = callback.measure(ScenesOracle(scenes, shift=1), scenes)
    assert right["eval/image->text/heldout/scene_accuracy"] == 1.0
    assert len(right) == 5 and all(value == 1.0 for value in right.values())
    assert wrong["eval/image->text/heldout/scene_accuracy"] < 0.15


def test_an_aligner_that_knows_the_truth_scores_one_and_one_that_prefers_twins_zero(scenes):
    callback = HeldOutScoreCallback("scene_hard_negatives", num_items=ITEMS, batch_size=16)
    right = callback.measure(ScenesOracle(scenes), scenes)
    assert set(right.values()) == {1.0}
    assert set(callback.measure(ScenesOracle(scenes, sign=-1.0), scenes).values()) == {0.0}


class SceneDrawer:
    """A stand-in text -> image model that renders, for each caption, a fresh real scene of it (``shift`` k:
    of the caption k places on in the batch), and a judge that reads each render's objects back exactly."""

    device = torch.device("cpu")

    def __init__(self, shift: int = 0) -> None:
        self.shift, self.drawn = shift, {}
        self.tokenizer = self  # model_sampler encodes the captions with the model's tokenizer

    def encode(self, captions: list[str]) -> dict[str, list[str]]:
        return {"captions": captions}

    def generate(self, conditions, num_samples: int, to: str, **sampling) -> dict[str, torch.Tensor]:
        captions = conditions["captions"][self.shift:] + conditions["captions"][:self.shift]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        images = []
        for text in captions:
            scene = draw_scene(parse_scene_caption(text), rng)
            images.append(torch.from_numpy(render_scene(scene)))
            self.drawn[images[-1].numpy().tobytes()] = scene.objects
        return {"image": torch.stack(images)}

    def read(self, images: torch.Tensor) -> list[tuple]:
        return [self.drawn[image.numpy().tobytes()] for image in images]


def test_samples_that_show_their_caption_score_one_and_those_of_another_caption_low(scenes, monkeypatch):
    right, wrong = SceneDrawer(), SceneDrawer(shift=2)  # two samples a caption: the next caption's
    monkeypatch.setattr("mmgen_lightning.callbacks.heldout_score.get_scene_judge", lambda datamodule: right)
    callback = HeldOutScoreCallback("scene_samples", splits=["test", "heldout"], num_items=16, samples_per_item=2,
                                    batch_size=8)
    flow = FlowMatching(scenes.data_spec, condition="text",
                        network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8})
    callback.setup(SimpleNamespace(datamodule=scenes, is_global_zero=True), flow, "fit")
    assert callback.judge is right  # loaded before fitting, by the first process
    scores = callback.measure(right, scenes)
    kinds = ("single", "relation", "binding", "counting", "two_objects")
    assert set(scores) == {f"eval/text->image/{split}/scene_accuracy{suffix}" for split in ("test", "heldout")
                           for suffix in ("", *(f"_{kind}" for kind in kinds))}
    assert set(scores.values()) == {1.0}
    callback.judge = wrong
    assert callback.measure(wrong, scenes)["eval/text->image/heldout/scene_accuracy"] < 0.2


class Painter:
    """A stand-in text -> image model that paints each name's asked skin tone (``offset`` 1: the next tone),
    with noise from the global torch RNG, so its samples depend on the seed."""

    device = torch.device("cpu")

    def __init__(self, datamodule, offset: int = 0) -> None:
        self.offset = offset
        encoded = datamodule.tokenizer.encode([item.caption for item in datamodule.items])
        self.tones = {tuple(ids[mask].tolist()): item.tones
                      for ids, mask, item in zip(encoded["text"], encoded["text_mask"], datamodule.items)}

    def generate(self, conditions, num_samples: int, to: str, **sampling) -> dict[str, torch.Tensor]:
        images = torch.ones(num_samples, 3, 32, 32)  # white
        for index, (ids, mask) in enumerate(zip(conditions["text"], conditions["text_mask"])):
            for slot, tone in enumerate(sorted(set(self.tones[tuple(ids[mask].tolist())]))):
                if tone:
                    colour = torch.tensor(TONE_COLOURS[(tone - 1 + self.offset) % 5]) / 127.5 - 1
                    images[index, :, 8 * slot:8 * slot + 8, :16] = colour[:, None, None]
        return {"image": (images + 0.02 * torch.randn_like(images)).clamp(-1, 1)}


def test_a_model_that_paints_the_asked_tone_scores_one_and_the_next_tone_zero(emoji):
    callback = HeldOutScoreCallback("emoji_tones", num_items=None, samples_per_item=2, batch_size=3)
    assert callback.measure(Painter(emoji), emoji) == {"eval/text->image/heldout/asked_tone": 1.0}
    assert callback.measure(Painter(emoji, offset=1), emoji) == {"eval/text->image/heldout/asked_tone": 0.0}
    asked = [emoji.items[i].tones for i in range(len(emoji.items)) if emoji.split_of[i] == 3]
    assert len(asked) >= 8 and any(len(set(tones)) == 2 for tones in asked)
    right = asked_tone_right(Painter(emoji), emoji, num_names=5, samples_per_name=2)
    assert right.shape == (5, 2) and right.all()


def test_sampling_is_seeded_and_leaves_the_training_random_stream_alone(emoji):
    def noise(seed: int) -> torch.Tensor:
        drawn = []

        class Recorder(Painter):
            def generate(self, conditions, num_samples, to, **sampling):
                drawn.append(torch.rand(3))
                return super().generate(conditions, num_samples, to, **sampling)

        HeldOutScoreCallback("emoji_tones", num_items=None, batch_size=2, seed=seed).measure(Recorder(emoji), emoji)
        return torch.stack(drawn)

    torch.manual_seed(5)
    first = noise(0)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the evaluation drew nothing from training's stream
    torch.manual_seed(123)
    assert torch.equal(first, noise(0)) and not torch.equal(first, noise(1))
    assert len(first) > 1 and not torch.equal(first[0], first[1])  # each chunk its own seed


# --- under DDP --------------------------------------------------------------------------------------------
class RecordingScore(HeldOutScoreCallback):
    """Writes what process 0 logged to ``path`` (under ``ddp_fork`` the processes are forks)."""

    def __init__(self, path: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = path

    def teardown(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({"results": self.results, "world_size": trainer.world_size}))


def test_two_processes_log_what_one_logs(scenes, tmp_path):
    recorded = {}
    for devices in (1, 2):
        torch.manual_seed(0)
        model = Aligner(scenes.data_spec, **TINY_ALIGNER)
        path = tmp_path / f"{devices}.json"
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto",
                            logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, limit_val_batches=1,
                            callbacks=[RecordingScore(path, score="scene_hard_negatives", num_items=ITEMS)])
        trainer.validate(model, datamodule=scenes, verbose=False)
        recorded[devices] = json.loads(path.read_text())
    assert recorded[1]["world_size"] == 1 and recorded[2]["world_size"] == 2
    assert recorded[1]["results"] == recorded[2]["results"] and len(recorded[1]["results"]) == 4
    assert all(0 <= value <= 1 for value in recorded[1]["results"].values())


# --- refused in one line -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"score": "fid"}, ("HeldOutScoreCallback score: unknown 'fid'; allowed: scene_captions, scene_samples, "
                        "scene_hard_negatives, emoji_tones")),
    ({"score": "scene_captions", "num_items": 0}, "HeldOutScoreCallback num_items must be >= 1, got 0"),
    ({"score": "emoji_tones", "samples_per_item": 0}, "HeldOutScoreCallback samples_per_item must be >= 1, got 0"),
    ({"score": "scene_captions", "every_n_validations": -1},
     "HeldOutScoreCallback every_n_validations must be >= 0, got -1"),
    ({"score": "scene_samples"}, "HeldOutScoreCallback samples_per_item must be >= 2 for scene_samples, got 1"),
    ({"score": "scene_captions", "splits": []},
     "HeldOutScoreCallback splits: none given; name one or more, e.g. [heldout]"),
])
def test_bad_arguments_are_one_line_errors(options, message):
    with pytest.raises(ValueError) as error:
        HeldOutScoreCallback(**options)
    assert str(error.value) == message


def test_a_score_that_does_not_fit_the_data_model_or_split_fails_before_training(scenes, emoji):
    captioner = Captioner(scenes.data_spec, modality="image", **TINY_CAPTIONER)
    cases = [(HeldOutScoreCallback("scene_captions"), captioner, emoji,
              "reads ScenesDataModule data, not EmojiDataModule"),
             (HeldOutScoreCallback("scene_hard_negatives"), captioner, scenes,
              "reads an Aligner of image and text, not a Captioner"),
             (HeldOutScoreCallback("emoji_tones"), captioner, emoji,
              "scores text->image, which Captioner does not serve"),
             (HeldOutScoreCallback("scene_captions", splits=["test", "dev"]), captioner, scenes,
              "split: unknown 'dev'")]
    for callback, model, datamodule, message in cases:
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False, callbacks=[callback])
        with pytest.raises(ValueError, match=message) as error:
            trainer.fit(model, datamodule=datamodule)
        assert "\n" not in str(error.value)
        assert trainer.global_step == 0

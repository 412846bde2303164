"""Held-out scores logged while training for the recipes whose data no per-attribute judge reads
(``EvaluationCallback``'s): scenes are right only as a whole; emoji have about 1,900 figures, most drawn
once. Each logs the score its benchmark reports, at the end of every ``every_n_validations``-th validation,
as ``eval/<direction>/<split>/<metric>`` in [0, 1] (TensorBoard stores each point's step and wall time):

* ``scene_captions`` (a Captioner of scenes): the share of the first ``num_items`` images of a split
  whose caption states every object and, for a relation, the relation right
  (:func:`~mmgen_lightning.metrics.scenes.caption_accuracy`), overall and per caption kind:
  ``eval/image->text/<split>/scene_accuracy``, ``..._<kind>``;
* ``scene_samples`` (a text -> image model of scenes): the share of ``samples_per_item`` samples of
  each of the first ``num_items`` captions of a split that show exactly what the caption says, read by
  the scenes judge (:func:`~mmgen_lightning.metrics.scenes.score_split`; the judge is trained or loaded
  from the cache at setup, before fitting), overall, per caption kind and GenEval's two objects:
  ``eval/text->image/<split>/scene_accuracy``, ``..._<kind>``;
* ``scene_hard_negatives`` (an Aligner of scenes): the ARO-style accuracy of each relation or binding
  image's caption against its swapped twins (:func:`~mmgen_lightning.metrics.scenes.hard_negative_accuracy`),
  overall and per twin: ``eval/image->text/<split>/hard_negative_accuracy``, ``..._<twin>``; a bag of words
  scores 0.5;
* ``emoji_tones`` (a text -> image model of emoji): the share of ``samples_per_item`` samples of each
  of the first ``num_items`` names of a split drawn in the asked skin tone(s)
  (:func:`~mmgen_lightning.metrics.emoji_tone.asked_tone_right`, read by its palette reader):
  ``eval/text->image/<split>/asked_tone``.

The scorers read a split whole, so the first process scores and the others receive its numbers
(``strategy.broadcast``): the logged numbers are those of one process, whatever the number of
processes. Sampling is seeded from ``seed`` (per chunk of ``batch_size``, as the Evaluator seeds it)
inside a forked RNG, so successive evaluations differ only by the model and training's random
stream is left as it was.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from mmgen_lightning.datamodules.emoji import EmojiDataModule
from mmgen_lightning.datamodules.scenes import ScenesDataModule
from mmgen_lightning.metrics.emoji_tone import asked_tone_right
from mmgen_lightning.metrics.scene_judge import SceneJudge, get_scene_judge
from mmgen_lightning.metrics.scenes import (aligner_similarity, caption_accuracy, hard_negative_accuracy,
                                            model_captioner, model_sampler, score_split)
from mmgen_lightning.models.aligner import Aligner

#: score -> (the data it reads, the direction it scores)
SCORES = {"scene_captions": (ScenesDataModule, "image->text"),
          "scene_samples": (ScenesDataModule, "text->image"),
          "scene_hard_negatives": (ScenesDataModule, "image->text"),
          "emoji_tones": (EmojiDataModule, "text->image")}


class HeldOutScoreCallback(L.Callback):
    """Logs a held-out score of scenes or emoji (see the module docstring) at the end of validation.

    Args:
        score: ``scene_captions``, ``scene_samples``, ``scene_hard_negatives`` or ``emoji_tones``.
        splits: the splits scored, each logged apart (``heldout``: scenes naming held-out colour-shape
            pairs, or emoji names whose (figure, tone) pair training never shows; ``test``: unseen items
            of seen pairs).
        num_items: each split's first items scored (images, or names for ``emoji_tones``); ``None``: all.
        samples_per_item: samples drawn per caption (``scene_samples``: at least 2) or name (``emoji_tones``).
        batch_size: items captioned, embedded or sampled at once (fixes the seeded chunks: keep it
            when comparing runs).
        every_n_validations: score at the end of every n-th validation of a fit (validation runs every
            ``val_check_interval`` steps or ``check_val_every_n_epoch`` epochs); ``trainer.validate``
            always scores; 0 scores only under ``trainer.validate``.
        seed: seeds sampling, so successive evaluations differ only by the model.
        sampling: keyword arguments of ``generate`` (steps, guidance_scale, temperature, ...).
    """

    def __init__(self, score: str, splits: list[str] | None = None, num_items: int | None = 64,
                 samples_per_item: int = 1, batch_size: int = 64, every_n_validations: int = 1, seed: int = 0,
                 sampling: dict[str, Any] | None = None) -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"HeldOutScoreCallback score: unknown {score!r}; allowed: {', '.join(SCORES)}")
        for name, value, least in (("num_items", num_items, 1), ("samples_per_item", samples_per_item, 1),
                                   ("batch_size", batch_size, 1), ("every_n_validations", every_n_validations, 0)):
            if value is not None and value < least:
                raise ValueError(f"HeldOutScoreCallback {name} must be >= {least}, got {value}")
        if score == "scene_samples" and samples_per_item < 2:  # score_split reads placement variety from two
            raise ValueError(f"HeldOutScoreCallback samples_per_item must be >= 2 for scene_samples, "
                             f"got {samples_per_item}")
        self.splits = ["heldout"] if splits is None else list(splits)
        if not self.splits:
            raise ValueError("HeldOutScoreCallback splits: none given; name one or more, e.g. [heldout]")
        self.score, self.num_items, self.samples_per_item = score, num_items, samples_per_item
        self.batch_size, self.every_n_validations, self.seed = batch_size, every_n_validations, seed
        self.sampling = dict(sampling or {})
        self.validations = 0  # validations of the fit so far, sanity check aside
        self.results: dict[str, float] | None = None
        self.judge: SceneJudge | None = None  # scene_samples: read by the first process only

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        """Refuse, before any training, data or a model the score does not read."""
        data, direction = SCORES[self.score]
        datamodule = trainer.datamodule
        if not isinstance(datamodule, data):
            raise ValueError(f"HeldOutScoreCallback score {self.score!r} reads {data.__name__} data, not "
                             f"{type(datamodule).__name__ if datamodule is not None else 'none'}")
        if self.score == "scene_hard_negatives":
            if not isinstance(pl_module, Aligner) or not {"image", "text"} <= set(pl_module.modalities):
                raise ValueError(f"HeldOutScoreCallback score {self.score!r} reads an Aligner of image and text, "
                                 f"not a {type(pl_module).__name__}")
        else:
            source, target = direction.split("->")
            if not pl_module.serves((source,), target):
                raise ValueError(f"HeldOutScoreCallback score {self.score!r} scores {direction}, which "
                                 f"{type(pl_module).__name__} does not serve")
        for split in self.splits:
            datamodule.dataset(split)  # an unknown split fails now, not at the first validation
        if self.score == "scene_samples" and trainer.is_global_zero and self.judge is None:
            self.judge = get_scene_judge(datamodule)  # trained once per data configuration, outside max_time

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":
            self.validations += 1
            if not self.every_n_validations or self.validations % self.every_n_validations:
                return
        scores = self.measure(pl_module, trainer.datamodule) if trainer.is_global_zero else None
        self.results = trainer.strategy.broadcast(scores, src=0)
        # every process holds the same numbers: the mean over processes is that number
        pl_module.log_dict(self.results, sync_dist=True)

    def measure(self, model, datamodule) -> dict[str, float]:
        """The score's numbers for ``model``, named ``eval/<direction>/<split>/<metric>``."""
        direction = SCORES[self.score][1]
        device = torch.device(model.device)
        named = {}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for split in self.splits:
                torch.manual_seed(self.seed)
                scores = self.split_scores(model, datamodule, split)
                # a kind or twin the first items do not hold has no score
                named.update({f"eval/{direction}/{split}/{name}": float(value)
                              for name, value in scores.items() if value is not None})
        return named

    def split_scores(self, model, datamodule, split: str) -> dict[str, float | None]:
        """The score's numbers on the first ``num_items`` items of ``split``; ``None`` where it holds none."""
        count = self.num_items or len(datamodule.dataset(split))
        if self.score == "scene_captions":
            result = caption_accuracy(model_captioner(model, **self.sampling), datamodule, split, count,
                                      self.batch_size)
            return {"scene_accuracy": result["accuracy"],
                    **{f"scene_accuracy_{kind}": value for kind, value in result["per_kind"].items()}}
        if self.score == "scene_samples":
            sampler = model_sampler(model, **self.sampling)
            result = score_split(lambda captions: sampler(captions).cpu(), datamodule, self.judge, split, count,
                                 self.samples_per_item, self.batch_size, self.seed)
            return {"scene_accuracy": result["accuracy"]["overall"],
                    **{f"scene_accuracy_{row}": value for row, value in result["accuracy"].items() if row != "overall"}}
        if self.score == "scene_hard_negatives":
            result = hard_negative_accuracy(aligner_similarity(model), datamodule, split, count, self.batch_size)
            return {"hard_negative_accuracy": result["accuracy"],
                    **{f"hard_negative_accuracy_{twin}": row["accuracy"] for twin, row in result["per_twin"].items()}}
        right = asked_tone_right(model, datamodule, split, count, self.samples_per_item, self.batch_size, self.seed,
                                 **self.sampling)
        return {"asked_tone": right.float().mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = state_dict["validations"]  # a resumed run keeps its cadence

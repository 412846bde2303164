"""Evaluate while training: every ``every_n_epochs`` epochs, at the end of validation, the model is
scored on the first ``num_samples`` items of a split by the same
:class:`~mmgen_lightning.metrics.evaluator.Evaluator` that writes ``mmgen evaluate`` reports, and
every number is logged (``eval/<direction>/<metric>``: coherence, FID/KID/IS/precision/recall in
the judges' feature spaces, BLEU/chrF, likelihood), plus the coherence matrix as a text table.

Under DDP each process generates its share of the samples and the metric states are gathered
before computing, so the logged numbers are those of one process evaluating everything. Judges
are trained (or loaded from the cache) before fitting, by the first process before the others, so
they take none of the time ``max_time`` counts; a run whose ``max_steps`` ends it before its first
evaluation (a 20-step try) trains none.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from mmgen_lightning.metrics.evaluator import Evaluator, default_directions, flatten, matrix_markdown
from mmgen_lightning.metrics.features import InceptionFeatures
from mmgen_lightning.metrics.judges import get_judge, judged_attributes
from mmgen_lightning.modalities import JUDGEABLE


class EvaluationCallback(L.Callback):
    """Scores the model with the report's :class:`~mmgen_lightning.metrics.evaluator.Evaluator` at the end of validation
    and logs every number as ``eval/<direction>/<metric>``.

    Args:
        directions: e.g. ``["text->image", "->image"]``; default: every scorable direction the model serves.
        num_samples: items of ``split`` evaluated, shared out over processes.
        batch_size: samples generated at once (fixes the chunks: keep it when comparing runs).
        every_n_epochs: evaluate at the end of validation every n-th epoch (``trainer.validate``
            always evaluates); 0 evaluates only under ``trainer.validate``.
        split: ``val`` or ``test`` (or ``train``).
        seed: seeds sampling and KID subsets, so successive evaluations differ only by the model.
        judge_seed: seed of the judges (part of their cache key).
        inception_weights: add Inception FID/KID/IS for images: a weights path, or ``"auto"`` for
            ``$MMGEN_INCEPTION_WEIGHTS`` / torch-fidelity's cache; ``None``: judges only.
        likelihood: also log the family's likelihood (IWAE NLL for the VAE, caption NLL).
        iwae_samples: ``K`` of the IWAE bound (default: the model's own).
        sampling: keyword arguments passed to ``generate`` (temperature, guidance_scale, ...).
    """

    def __init__(self, directions: list[str] | None = None, num_samples: int = 256, batch_size: int = 64,
                 every_n_epochs: int = 1, split: str = "val", seed: int = 0, judge_seed: int = 0,
                 inception_weights: str | None = None, likelihood: bool = True, iwae_samples: int | None = None,
                 sampling: dict[str, Any] | None = None) -> None:
        super().__init__()
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        self.directions = directions
        self.num_samples, self.batch_size = num_samples, batch_size
        self.every_n_epochs, self.split = every_n_epochs, split
        self.seed, self.judge_seed = seed, judge_seed
        self.inception_weights, self.likelihood, self.iwae_samples = inception_weights, likelihood, iwae_samples
        self.sampling = dict(sampling or {})
        self.evaluator: Evaluator | None = None
        self.results: dict[str, Any] | None = None
        self._evaluated_epoch: int | None = None
        self._judged: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "dataset"):
            raise ValueError("EvaluationCallback needs a multimodal datamodule (trainer.fit/validate(datamodule=...))")
        directions = self.directions or default_directions(pl_module, datamodule)
        targets = sorted({d.split("->")[1] for d in directions} & set(JUDGEABLE))
        self._judged = [m for m in targets if judged_attributes(datamodule, m)]
        inception = None
        if self.inception_weights and "image" in self._judged:
            inception = InceptionFeatures(None if self.inception_weights == "auto" else self.inception_weights)
        self.evaluator = Evaluator(datamodule, {}, split=self.split, num_samples=self.num_samples,
                                   batch_size=self.batch_size, seed=self.seed, directions=directions,
                                   inception=inception, likelihood=self.likelihood, iwae_samples=self.iwae_samples,
                                   sampling=self.sampling)
        self.evaluator.my_chunks(trainer.global_rank, trainer.world_size)  # fails now, not epochs later
        # judges train before fitting, outside the time max_time counts, unless the run ends before it evaluates
        if stage != "fit" or self.evaluates(trainer, datamodule):
            self.load_judges(trainer)

    def evaluates(self, trainer: L.Trainer, datamodule) -> bool:
        """Whether a fit evaluates before ``max_steps`` ends it (a 20-step try trains no judge)."""
        if trainer.max_steps is None or trainer.max_steps < 0 or not self.every_n_epochs:
            return bool(self.every_n_epochs)
        if isinstance(trainer.val_check_interval, int):
            return trainer.max_steps >= trainer.val_check_interval
        try:
            batches = len(datamodule.train_dataloader())
        except TypeError:  # an iterable without a length: assume it evaluates
            return True
        return trainer.max_steps >= batches * (trainer.check_val_every_n_epoch or 1) * self.every_n_epochs

    def load_judges(self, trainer: L.Trainer) -> None:
        """Train (or load from the cache) the judges: the first process trains and caches, the others load."""
        datamodule = self.evaluator.datamodule
        with torch.inference_mode(False), torch.enable_grad():  # validation runs in inference mode
            if trainer.is_global_zero:
                for modality in self._judged:
                    get_judge(datamodule, modality, seed=self.judge_seed)
            trainer.strategy.barrier("mmgen_judges")
            self.evaluator.judges = {m: get_judge(datamodule, m, seed=self.judge_seed) for m in self._judged}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.sanity_checking or self.evaluator is None:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (not self.every_n_epochs or (trainer.current_epoch + 1) % self.every_n_epochs
                        or self._evaluated_epoch == trainer.current_epoch):
            return
        self._evaluated_epoch = trainer.current_epoch if fitting else None
        if set(self.evaluator.judges) != set(self._judged):
            self.load_judges(trainer)
        self.results = self.evaluator.run(pl_module, trainer.global_rank, trainer.world_size)
        # every process holds the same gathered numbers: the mean over processes is that number
        pl_module.log_dict(flatten(self.results), sync_dist=True)
        self._log_matrix(trainer)

    @rank_zero_only
    def _log_matrix(self, trainer: L.Trainer) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_text") or not self.results["coherence_matrix"]:
            return
        writer.add_text("eval/coherence_matrix", matrix_markdown(self.results["coherence_matrix"]), trainer.global_step)


"""One evaluation protocol for reports (``mmgen evaluate``) and dashboards (``EvaluationCallback``).

The first ``num_samples`` items of a split are cut into chunks of ``batch_size``; under DDP each
process takes a contiguous block of chunks, and every chunk's sampling is seeded from
``(seed, chunk, direction)``, so the samples do not depend on how many processes share the work.
Every number is a torchmetrics state (sums, or features gathered in process order), so
``compute`` on each process gives the number one process would have computed.

Per direction ``sources -> target`` the model serves:

- coherence (when some source states an attribute the target shows), beside ``real_data``: the
  judges' reading of the real targets, the ceiling;
- sample quality (when the target is judged): FID, KID, IS, precision/recall/density/coverage in
  the judge's feature space, and in Inception's for images when its weights are given;
- text quality (when the target is text and the data has captions): BLEU and chrF;

and once per model, its likelihood where the family has one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from mmgen_lightning.batch import parse_direction
from mmgen_lightning.datamodules.attributes import describe
from mmgen_lightning.datamodules.base import MultimodalDataModule
from mmgen_lightning.metrics.coherence import AttributeAgreement, compared_attributes, read_attributes
from mmgen_lightning.metrics.features import InceptionFeatures, JudgeFeatures
from mmgen_lightning.metrics.judges import Judge, judged_attributes
from mmgen_lightning.metrics.likelihood import LikelihoodMetric, has_likelihood, negative_log_likelihood
from mmgen_lightning.metrics.quality import SampleQuality
from mmgen_lightning.metrics.text import TextQuality
from mmgen_lightning.modalities import JUDGEABLE, MODALITIES, batch_keys
KID_SUBSET_SIZE = 1000


class RealData:
    """Stands in for a model whose every sample is the conditioning item's own real target: scoring
    it measures the data against itself (coherence equals the judges' accuracy)."""

    condition_modalities = output_modalities = MODALITIES
    tokenizer = None
    device = torch.device("cpu")

    def serves(self, sources: tuple[str, ...], target: str) -> bool:
        return True


def default_directions(model, datamodule) -> list[str]:
    """Single-source directions the model serves that can be scored (a shared attribute, or a
    judged target), then unconditional ones with a judged target; for a model that serves none of
    those (a VQVAE), its reconstructions ``m->m`` of judged modalities."""
    spec = datamodule.data_spec
    available = set(spec["modalities"])
    directions = []
    for target in model.output_modalities:
        if target not in available:
            continue
        for source in model.condition_modalities:
            if source == target or source not in available or not model.serves((source,), target):
                continue
            if compared_attributes(datamodule, f"{source}->{target}"):
                directions.append(f"{source}->{target}")
    for target in model.output_modalities:
        if target in available and model.serves((), target) and judged_attributes(datamodule, target):
            directions.append(f"->{target}")
    if not directions:  # a model that only reconstructs (a tokenizer) is scored on its reconstructions
        directions = [f"{m}->{m}" for m in model.output_modalities
                      if m in available and model.serves((m,), m) and judged_attributes(datamodule, m)]
    return directions


def chunk_seed(seed: int, chunk: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, chunk, stream]).generate_state(1)[0])


class Evaluator:
    """Every metric of a model on the first ``num_samples`` items of ``split``.

    Args:
        datamodule: the data the model was trained on.
        judges: a judge per judged target modality (``metrics.judges.get_judge``).
        split: ``train``, ``val`` or ``test``.
        num_samples: items evaluated (default: the whole split).
        batch_size: items per chunk; fixes the chunks, so keep it when comparing runs.
        seed: seeds sampling and the KID subsets.
        directions: e.g. ``["text->image", "->image"]``; default: :func:`default_directions`.
        inception: Inception features for image targets (``None``: judge features only).
        quality: compute the sample-quality metrics (FID/KID/IS, precision/recall) of judged targets.
        text: compute the caption metrics of directions that write text from a condition.
        likelihood: compute the model's likelihood (bits/dim) where it has one.
        iwae_samples: ``K`` of the VAE's IWAE bound (default: the model's own ``iwae_samples``).
        kid_subsets: KID's subsets (:class:`~mmgen_lightning.metrics.quality.SampleQuality`).
        nearest_k: ``k`` of precision/recall's neighbourhoods (:class:`~mmgen_lightning.metrics.quality.SampleQuality`).
        sampling: keyword arguments of ``generate`` (temperature, truncation, guidance_scale, ...).
    """

    def __init__(self, datamodule: MultimodalDataModule, judges: dict[str, Judge], split: str = "test",
                 num_samples: int | None = None, batch_size: int = 64, seed: int = 0,
                 directions: list[str] | None = None, inception: InceptionFeatures | None = None,
                 quality: bool = True, text: bool = True,
                 likelihood: bool = True, iwae_samples: int | None = None, kid_subsets: int = 50,
                 nearest_k: int = 5, sampling: dict[str, Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.datamodule, self.judges, self.split = datamodule, judges, split
        self.dataset = datamodule.dataset(split)
        self.count = len(self.dataset) if num_samples is None else min(num_samples, len(self.dataset))
        if self.count < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.batch_size, self.seed = batch_size, seed
        self.directions = None if directions is None else [d.strip() for d in directions]
        for direction in self.directions or []:
            parse_direction(direction)
        self.inception = inception
        self.use_quality, self.use_text, self.use_likelihood = quality, text, likelihood
        self.iwae_samples, self.kid_subsets, self.nearest_k = iwae_samples, kid_subsets, nearest_k
        self.sampling = dict(sampling or {})
        self.spec = datamodule.data_spec
        self.reading = describe(datamodule)

    # --- what gets measured --------------------------------------------------------------------
    def plan(self, model) -> list[dict[str, Any]]:
        """Per direction: its sources, target, compared attributes and which metrics apply."""
        directions = self.directions if self.directions is not None else default_directions(model, self.datamodule)
        available = set(self.spec["modalities"])
        plan = []
        for direction in directions:
            sources, target = parse_direction(direction)
            missing = [m for m in (*sources, target) if m not in available]
            if missing:
                raise ValueError(f"direction {direction!r}: the data carries no {missing[0]!r}; "
                                 f"it has {', '.join(sorted(available))}")
            if not model.serves(sources, target):
                raise ValueError(f"direction {direction!r}: {type(model).__name__} does not serve it")
            compared = compared_attributes(self.datamodule, direction) if sources else []
            judged = target in JUDGEABLE and bool(judged_attributes(self.datamodule, target))
            if judged and target not in self.judges:
                raise ValueError(f"direction {direction!r}: no judge for {target!r} was given "
                                 f"(judges: {', '.join(self.judges) or 'none'})")
            plan.append({"direction": direction, "sources": sources, "target": target, "compared": compared,
                         "quality": self.use_quality and judged and not isinstance(model, RealData),
                         "text": self.use_text and target == "text" and bool(sources) and "text" in available
                                 and not isinstance(model, RealData)})
        return plan

    def my_chunks(self, rank: int, world_size: int) -> list[tuple[int, int, int]]:
        """``(chunk index, start, stop)`` of this process: a contiguous block, in order."""
        starts = list(range(0, self.count, self.batch_size))
        if len(starts) < world_size:
            raise ValueError(f"{self.count} samples in chunks of batch_size={self.batch_size} give {len(starts)} "
                             f"chunks for {world_size} processes; lower batch_size or raise num_samples")
        block = slice(rank * len(starts) // world_size, (rank + 1) * len(starts) // world_size)
        return [(i, s, min(s + self.batch_size, self.count)) for i, s in list(enumerate(starts))[block]]

    # --- the run --------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, model, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """Evaluate ``model`` (this process's share under DDP; every process must call it)."""
        device = torch.device(getattr(model, "device", "cpu"))
        data_tokenizer = self.datamodule.tokenizer if "text" in self.spec["modalities"] else None
        tokenizer = getattr(model, "tokenizer", None) or data_tokenizer
        names = list(self.spec["attribute_names"])
        plan = self.plan(model)
        judges = {m: judge.to(device) for m, judge in self.judges.items()}
        extractors = {m: {"judge": JudgeFeatures(judge)} for m, judge in judges.items()}
        if self.inception is not None and "image" in extractors:
            extractors["image"]["inception"] = self.inception.to(device)

        agreement, ceiling, quality, text = {}, {}, {}, {}
        for item in plan:
            d = item["direction"]
            if item["compared"]:
                agreement[d] = AttributeAgreement(len(item["compared"])).to(device)
                ceiling[d] = AttributeAgreement(len(item["compared"])).to(device)
            if item["quality"]:
                # KID on every sample at once when there are at most 1000 (one subset is then the
                # full unbiased estimate), else the usual subsets of 1000
                subsets = self.kid_subsets if self.count > KID_SUBSET_SIZE else 1
                quality[d] = {name: SampleQuality(ex.num_features, ex.num_classes, min(KID_SUBSET_SIZE, self.count),
                                                  subsets, self.nearest_k, self.seed).to(device)
                              for name, ex in extractors[item["target"]].items()}
            if item["text"]:
                text[d] = TextQuality().to(device)
        scorable = self.use_likelihood and not isinstance(model, RealData) and has_likelihood(model) and \
            self._scorable(model)
        likelihood = LikelihoodMetric().to(device) if scorable else None
        likelihood_name = None

        for chunk, start, stop in self.my_chunks(rank, world_size):
            batch = default_collate([self.dataset[i] for i in range(start, stop)])
            batch = {k: v.to(device) for k, v in batch.items()}
            truth = batch["attributes"]
            real_features = {}
            for m in {item["target"] for item in plan if item["quality"]}:
                real_features[m] = {name: ex(batch[m]) for name, ex in extractors[m].items()}
            for index, item in enumerate(plan):
                d, target = item["direction"], item["target"]
                samples = self._samples(model, batch, item["sources"], target, chunk_seed(self.seed, chunk, index))
                if d in agreement:
                    columns = [names.index(n) for n in item["compared"]]
                    read = read_attributes(samples, target, self.spec, judges, tokenizer, self.reading)
                    agreement[d].update(read[:, columns], truth[:, columns])
                    read = read_attributes(batch, target, self.spec, judges, data_tokenizer, self.reading)
                    ceiling[d].update(read[:, columns], truth[:, columns])
                for name, metric in quality.get(d, {}).items():
                    features, _ = real_features[target][name]
                    metric.update(features, real=True)
                    features, logits = extractors[target][name](samples[target])
                    metric.update(features, real=False, logits=logits)
                if d in text:
                    text[d].update(tokenizer.decode(samples["text"].cpu()), data_tokenizer.decode(batch["text"].cpu()))
            if likelihood is not None:
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(chunk_seed(self.seed, chunk, len(plan)))
                    likelihood_name, nll, dims = negative_log_likelihood(model, batch, iwae_samples=self.iwae_samples)
                likelihood.update(nll, dims)

        return self._compute(plan, agreement, ceiling, quality, text, likelihood, likelihood_name)

    def _samples(self, model, batch: dict[str, Tensor], sources: tuple[str, ...], target: str,
                 seed: int) -> dict[str, Tensor]:
        if isinstance(model, RealData):
            return {k: batch[k] for k in batch_keys([target])}
        keys = batch_keys(sources)
        count = batch["attributes"].shape[0]
        device = batch["attributes"].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return model.generate({k: batch[k] for k in keys}, num_samples=count, to=target, **self.sampling)

    def _scorable(self, model) -> bool:
        """Whether the data carries everything the family's likelihood scores."""
        needed = list(getattr(model, "modalities", None) or [*model.condition_modalities, *model.output_modalities])
        return all(m in self.spec["modalities"] for m in needed)

    def _compute(self, plan, agreement, ceiling, quality, text, likelihood, likelihood_name) -> dict[str, Any]:
        """Every metric, in one fixed order on every process (each compute gathers over processes)."""
        result: dict[str, Any] = {"split": self.split, "samples": self.count, "seed": self.seed,
                                  "coherence": [], "quality": {}, "text": {}}
        for item in plan:
            d = item["direction"]
            if d in agreement:
                scores, real = agreement[d].compute(), ceiling[d].compute()
                row = {"direction": d, "samples": int(scores["samples"]), "attributes": item["compared"],
                       "accuracy": scores["accuracy"].item(), "real_data": real["accuracy"].item()}
                per_attribute = scores["per_attribute"].reshape(-1)  # torchmetrics squeezes a single attribute
                row.update({f"accuracy_{n}": v.item() for n, v in zip(item["compared"], per_attribute)})
                result["coherence"].append(row)
            if d in quality:
                result["quality"][d] = {name: metric.compute() for name, metric in quality[d].items()}
            if d in text:
                result["text"][d] = text[d].compute()
        result["coherence_matrix"] = coherence_matrix(result["coherence"])
        result["likelihood"] = None
        if likelihood is not None:
            scores = likelihood.compute()
            result["likelihood"] = {"kind": likelihood_name,
                                    **{k: (v.item() if v.is_floating_point() else int(v)) for k, v in scores.items()}}
        return result


@torch.no_grad()
def coherence(model, datamodule, direction: str, judges: dict[str, Judge], split: str = "test",
              limit: int | None = None, batch_size: int = 256, **sampling: Any) -> dict[str, Any]:
    """Accuracy of ``direction`` on ``split``: per compared attribute and all of them at once, and the
    same reading of the real data (``real_data``, the ceiling). ``model`` may be :class:`RealData` to
    score the data against itself."""
    if not compared_attributes(datamodule, direction):
        raise ValueError(f"direction {direction!r}: no attribute is observable on both sides")
    evaluator = Evaluator(datamodule, judges, split=split, num_samples=limit, batch_size=batch_size,
                          directions=[direction], quality=False, text=False, likelihood=False, sampling=sampling)
    return evaluator.run(model)["coherence"][0]


def coherence_matrix(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{source: {target: accuracy}}`` of the single-source coherence rows."""
    matrix: dict[str, dict[str, float]] = {}
    for row in rows:
        sources, target = parse_direction(row["direction"])
        if len(sources) == 1:
            matrix.setdefault(sources[0], {})[target] = row["accuracy"]
    return matrix


def matrix_markdown(matrix: dict[str, dict[str, float]]) -> str:
    """``{source: {target: accuracy}}`` as a Markdown table, sources as rows."""
    targets = sorted({t for row in matrix.values() for t in row})
    lines = ["| source \\ target | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for source, row in matrix.items():
        lines.append(f"| {source} | " + " | ".join(f"{row[t]:.3f}" if t in row else "" for t in targets) + " |")
    return "\n".join(lines)


def flatten(result: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Scalars of a result, named ``eval/<direction>/<metric>``, for loggers."""
    flat = {}
    for row in result["coherence"]:
        base = f"{prefix}/{row['direction']}"
        flat[f"{base}/coherence"] = row["accuracy"]
        flat.update({f"{base}/coherence_{n}": row[f"accuracy_{n}"] for n in row["attributes"]})
    for direction, by_features in result["quality"].items():
        for features, scores in by_features.items():
            flat.update({f"{prefix}/{direction}/{k}_{features}": v for k, v in scores.items() if k != "samples"})
    for direction, scores in result["text"].items():
        flat.update({f"{prefix}/{direction}/{k}": v for k, v in scores.items()})
    if result.get("likelihood"):
        kind = result["likelihood"]["kind"]
        flat[f"{prefix}/{kind}_nll"] = result["likelihood"]["nll_nats_per_sample"]
        flat[f"{prefix}/{kind}_bits_per_dim"] = result["likelihood"]["bits_per_dim"]
    return flat

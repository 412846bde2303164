"""What ``mmgen evaluate`` measures: one report per checkpoint, as JSON and as a Markdown table.

The datamodule is rebuilt from the arguments stored in the checkpoint (or from ``--config``),
judges are trained once on its real training split and cached, and the model is scored by the
same :class:`~mmgen_lightning.metrics.evaluator.Evaluator` the training dashboards use: coherence
of every direction it serves (with the real data's own score beside it, the ceiling), FID, KID,
IS and precision/recall/density/coverage in the judges' feature spaces (and Inception's, for
images, given ``--inception``), BLEU/chrF of captions, and the likelihood where the family has one.
A text -> image model of scenes (``datamodules/scenes.py``) also gets the GenEval-style table of
:func:`~mmgen_lightning.metrics.scenes.evaluate_scenes` (the first ``limit`` captions, default 64, of the
seen and held-out splits, 8 samples each, the real renders' scores beside).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from mmgen_lightning.metrics.evaluator import JUDGEABLE, Evaluator, default_directions, matrix_markdown
from mmgen_lightning.metrics.features import InceptionFeatures
from mmgen_lightning.metrics.judges import get_judge, judge_path, judged_attributes
from mmgen_lightning.batch import parse_direction
from mmgen_lightning.datamodules.scenes import ScenesDataModule
from mmgen_lightning.errors import UsageError, one_line
from mmgen_lightning.knobs import check_sampling
from mmgen_lightning.models.base import CHECKPOINT_KEY, load_generator


def _import(class_path: str, what: str):
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("mmgen_lightning."):
        raise ValueError(f"{what}: refusing to import {class_path!r}; only mmgen_lightning classes load")
    return getattr(importlib.import_module(module_name), name)


def load_datamodule(ckpt: str | Path, config: str | Path | None = None):
    """The checkpoint's datamodule, from ``--config``'s ``data`` section or the checkpoint itself."""
    if config is not None:
        try:
            data = (yaml.safe_load(Path(config).read_text()) or {}).get("data")
        except (yaml.YAMLError, AttributeError) as error:  # AttributeError: the YAML is not a mapping
            raise UsageError(f"not a YAML mapping with a data section ({one_line(str(error))})", f"--config {config}",
                             "give the config the model was trained with") from error
        if not data or "class_path" not in data:
            raise ValueError(f"{config}: no 'data.class_path' section")
        return _import(data["class_path"], f"{config}: data.class_path")(**data.get("init_args", {}))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    stored = (checkpoint.get(CHECKPOINT_KEY) or {}).get("datamodule")
    if not stored:
        raise ValueError(f"{ckpt}: the checkpoint records no datamodule; pass --config CFG")
    init_args = {k: v for k, v in stored["init_args"].items() if not k.startswith("_")}  # older checkpoints
    return _import(stored["class_path"], f"{ckpt}: datamodule")(**init_args)


def served_directions(model, spec_or_datamodule) -> list[str]:
    """Directions a report scores (see :func:`~mmgen_lightning.metrics.evaluator.default_directions`)."""
    return default_directions(model, spec_or_datamodule)


def evaluate(ckpt: str | Path, config: str | Path | None = None, split: str = "test", limit: int | None = None,
             seed: int = 0, inception: str | bool | None = None, batch_size: int = 64,
             directions: list[str] | None = None, aligner: str | Path | None = None,
             reference_limit: int | None = None, sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score a checkpoint on ``split`` (the first ``limit`` items).

    Args:
        sampling: knobs of the family's ``generate`` (steps, guidance_scale, temperature, ...); unset ones
            are the checkpoint's defaults. Checked against the family's declared knobs before any judge is trained.
        inception: ``True`` (find the weights: ``$MMGEN_INCEPTION_WEIGHTS`` or torch-fidelity's
            cache) or a weights path adds Inception FID/KID/IS for images; ``None``/``False``: judges only.
        aligner: an Aligner checkpoint: adds the reference-free ``alignment`` section
            (``metrics/alignment.py``); on data without attributes (a manifest) it is the whole report.
        reference_limit: the most training images the ``alignment`` section compares image samples with
            (``None``: :data:`~mmgen_lightning.metrics.alignment.REFERENCE_LIMIT`).
    """
    started = time.time()
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, config)
    spec = datamodule.data_spec
    if hasattr(model, "embed_captions"):  # an Aligner generates nothing: its report is retrieval recall
        from mmgen_lightning.metrics.alignment import retrieval_report

        return {**retrieval_report(model, ckpt, datamodule, split, limit, batch_size),
                "seconds": round(time.time() - started, 1)}
    check_directions(model, spec, directions or [])
    sampling = dict(sampling or {})
    check_sampling(model, sampling, flag_style=True)
    alignment = None
    if aligner is not None:  # needs no attributes or judges, so it also scores a user's own manifest
        from mmgen_lightning.metrics.alignment import alignment_report

        alignment = alignment_report(model, ckpt, aligner, datamodule, directions, split, limit, batch_size, seed,
                                     reference_limit, **sampling)
        if "attribute_names" not in spec:
            return {"checkpoint": str(ckpt), "family": type(model).__name__, "dataset": spec["dataset"],
                    "split": split, "samples": alignment["rows"][0]["samples"], "alignment": alignment,
                    "seconds": round(time.time() - started, 1)}
    if "attribute_names" not in spec:  # a user's manifest: nothing to judge coherence or quality with
        return _likelihood_only(ckpt, model, datamodule, split, limit, batch_size, started)
    directions = directions or default_directions(model, datamodule)
    targets = sorted({d.split("->")[1] for d in directions} & set(JUDGEABLE))
    extractor = None  # found (or refused) before any judge is trained
    if inception and "image" in targets:
        extractor = InceptionFeatures(None if inception is True else inception)
    judges, judge_files = {}, {}
    for modality in targets:
        if judged_attributes(datamodule, modality):
            judges[modality] = get_judge(datamodule, modality, seed=seed)
            judge_files[modality] = judge_path(datamodule, modality, seed).name
    evaluator = Evaluator(datamodule, judges, split=split, num_samples=limit, batch_size=batch_size, seed=seed,
                          directions=directions, inception=extractor, sampling=sampling)
    report: dict[str, Any] = {"checkpoint": str(ckpt), "family": type(model).__name__, "dataset": spec["dataset"],
                              "judges": judge_files}
    report.update(evaluator.run(model))
    if isinstance(datamodule, ScenesDataModule) and model.serves(("text",), "image"):
        # a scene is right only as a whole (its objects, colours, sizes, relation, count), which no
        # per-attribute judge reads: the GenEval-style table of metrics/scenes.py scores it
        from mmgen_lightning.metrics.scenes import evaluate_scenes, model_sampler

        report["scenes"] = evaluate_scenes(model_sampler(model, **sampling), datamodule, num_captions=limit or 64,
                                           samples_per_caption=8, batch_size=batch_size, seed=seed)
    if alignment is not None:
        report["alignment"] = alignment
    if extractor is not None:
        report["inception_weights"] = str(extractor.weights)
    report["seconds"] = round(time.time() - started, 1)
    return report


def check_directions(model, spec, directions: Sequence[str]) -> None:
    """Every asked direction is well formed, served by the model and carried by the data: checked before
    any judge is trained or sample drawn."""
    family = type(model).__name__
    for direction in directions:
        where = f"--direction {direction}"
        try:
            sources, target = parse_direction(direction.strip())
        except ValueError as error:
            raise UsageError(str(error), where, "write it as 'text->image', 'text+audio->image' or '->image'") from error
        if not model.serves(sources, target):
            raise UsageError(f"{family} cannot generate {direction}", where, f"it serves: {', '.join(model.directions())}")
        missing = [m for m in (*sources, target) if m not in spec["modalities"]]
        if missing:
            raise UsageError(f"the data carries no {missing[0]!r}", where,
                             f"it has {', '.join(spec['modalities'])}; pick a direction between those")


NOT_MEASURED = ("coherence, FID/KID/IS and precision/recall need judged attributes, which only the built-in "
                "datasets (shapes, digits) carry; pass --aligner ALIGNER_CKPT for reference-free alignment")


def _likelihood_only(ckpt, model, datamodule, split: str, limit: int | None, batch_size: int, started: float):
    """The report of a checkpoint trained on data without attributes: its likelihood on ``split``, and
    what was not measured and why; a family without a likelihood has nothing to report."""
    from torch.utils.data import default_collate

    from mmgen_lightning.metrics.likelihood import LikelihoodMetric, has_likelihood, negative_log_likelihood

    family, dataset = type(model).__name__, datamodule.data_spec["dataset"]
    if not has_likelihood(model):
        raise UsageError(f"{dataset} data carries no attributes to judge and {family} has no likelihood, so there "
                         "is nothing to measure", f"--ckpt {ckpt}", "pass --aligner ALIGNER_CKPT for reference-free "
                         "alignment, or evaluate a model trained on shapes or digits")
    data = datamodule.dataset(split)
    count = len(data) if limit is None else min(limit, len(data))
    if count < 1:
        raise UsageError(f"the {split} split is empty", "--split", "pick a split with rows")
    metric, kind = LikelihoodMetric(), None
    for start in range(0, count, batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, count))]
        items = [item for item in items if not any(key.startswith("_") for key in item)]  # rows skipped on error
        if not items:
            continue
        batch = {k: v.to(model.device) for k, v in default_collate(items).items()}
        kind, nll, dims = negative_log_likelihood(model, batch)
        metric.update(nll, dims)
    scores = metric.compute()
    return {"checkpoint": str(ckpt), "family": family, "dataset": dataset, "split": split,
            "samples": int(scores["samples"]), "coherence": [], "quality": {}, "text": {},
            "likelihood": {"kind": kind, "nll_nats_per_sample": float(scores["nll_nats_per_sample"]),
                           "bits_per_dim": float(scores["bits_per_dim"]), "samples": int(scores["samples"])},
            "not_measured": NOT_MEASURED, "seconds": round(time.time() - started, 1)}


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: coherence, sample quality, text, likelihood, alignment, scenes."""
    lines = [f"### {report['family']} on {report['dataset']} ({report['split']} split, "
             f"{report.get('samples', '?')} samples)", ""]
    if report.get("coherence"):
        lines += ["| direction | compared attributes | coherence | real data (judge ceiling) |", "|---|---|---|---|"]
        for row in report["coherence"]:
            ceiling = row.get("real_data")
            lines.append(f"| {row['direction']} | {', '.join(row['attributes'])} | {row['accuracy']:.3f} | "
                         f"{'' if ceiling is None else f'{ceiling:.3f}'} |")
        lines.append("")
    if len(report.get("coherence_matrix") or {}) > 1:
        lines += ["Coherence matrix (rows: condition, columns: generated):", "",
                  matrix_markdown(report["coherence_matrix"]), ""]
    quality = [(d, name, scores) for d, by_features in (report.get("quality") or {}).items()
               for name, scores in by_features.items()]
    if quality:
        lines += ["| direction | features | FID | KID | IS | precision | recall | density | coverage |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for direction, name, s in quality:
            values = [s["fid"], s["kid"], s.get("inception_score", "")]
            values += [s[k] for k in ("precision", "recall", "density", "coverage")]
            lines.append(f"| {direction} | {name} | " + " | ".join(_number(v) for v in values) + " |")
        lines.append("")
    if report.get("text"):
        lines += ["| direction | BLEU | chrF |", "|---|---|---|"]
        lines += [f"| {d} | {s['bleu']:.3f} | {s['chrf']:.3f} |" for d, s in report["text"].items()]
        lines.append("")
    if report.get("likelihood"):
        lk = report["likelihood"]
        lines += ["| likelihood | NLL (nats/sample) | bits/dim | samples |", "|---|---|---|---|",
                  f"| {lk['kind']} | {lk['nll_nats_per_sample']:.2f} | {lk['bits_per_dim']:.3f} | {lk['samples']} |",
                  ""]
    if report.get("not_measured"):
        lines += [f"Not measured: {report['not_measured']}.", ""]
    if report.get("retrieval"):
        from mmgen_lightning.metrics.alignment import retrieval_markdown

        lines.append(retrieval_markdown(report["retrieval"]))
    if report.get("alignment"):
        from mmgen_lightning.metrics.alignment import alignment_markdown

        lines.append(alignment_markdown(report["alignment"]))
    if report.get("scenes"):
        from mmgen_lightning.metrics.scenes import scenes_markdown

        lines.append(scenes_markdown(report["scenes"]))
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: str | Path) -> str:
    """Write ``report`` to ``out`` (JSON) and its Markdown table beside it (``.md``); returns the table."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    return table

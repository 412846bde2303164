"""``mmgen evaluate``: one report per checkpoint, as JSON and as a Markdown table.

The datamodule is rebuilt from the arguments stored in the checkpoint (or from ``--config``),
judges are trained once on its real training split and cached, and the model is scored by the
same :class:`~mmgen_lightning.metrics.evaluator.Evaluator` the training dashboards use: coherence
of every direction it serves (with the real data's own score beside it, the ceiling), FID, KID,
IS and precision/recall/density/coverage in the judges' feature spaces (and Inception's, for
images, given ``--inception``), BLEU/chrF of captions, and the likelihood where the family has one.
"""

from __future__ import annotations

import argparse
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
from mmgen_lightning.models.base import CHECKPOINT_KEY, load_generator


def _import(class_path: str, what: str):
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("mmgen_lightning."):
        raise ValueError(f"{what}: refusing to import {class_path!r}; only mmgen_lightning classes load")
    return getattr(importlib.import_module(module_name), name)


def load_datamodule(ckpt: str | Path, config: str | Path | None = None):
    """The checkpoint's datamodule, from ``--config``'s ``data`` section or the checkpoint itself."""
    if config is not None:
        data = (yaml.safe_load(Path(config).read_text()) or {}).get("data")
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
             directions: list[str] | None = None) -> dict[str, Any]:
    """Score a checkpoint on ``split`` (the first ``limit`` items).

    Args:
        inception: ``True`` (find the weights: ``$MMGEN_INCEPTION_WEIGHTS`` or torch-fidelity's
            cache) or a weights path adds Inception FID/KID/IS for images; ``None``/``False``: judges only.
    """
    started = time.time()
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, config)
    spec = datamodule.data_spec
    directions = directions or default_directions(model, datamodule)
    targets = sorted({d.split("->")[1] for d in directions} & set(JUDGEABLE))
    judges, judge_files = {}, {}
    for modality in targets:
        if judged_attributes(datamodule, modality):
            judges[modality] = get_judge(datamodule, modality, seed=seed)
            judge_files[modality] = judge_path(datamodule, modality, seed).name
    extractor = None
    if inception and "image" in targets:
        extractor = InceptionFeatures(None if inception is True else inception)
    evaluator = Evaluator(datamodule, judges, split=split, num_samples=limit, batch_size=batch_size, seed=seed,
                          directions=directions, inception=extractor)
    report: dict[str, Any] = {"checkpoint": str(ckpt), "family": type(model).__name__, "dataset": spec["dataset"],
                              "judges": judge_files}
    report.update(evaluator.run(model))
    if extractor is not None:
        report["inception_weights"] = str(extractor.weights)
    report["seconds"] = round(time.time() - started, 1)
    return report


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables: coherence, sample quality, text, likelihood."""
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
    return "\n".join(lines)


def evaluate_cli(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmgen evaluate", description=(
        "Score a checkpoint: cross-modal coherence and sample quality (FID, KID, IS, precision/recall) read by "
        "judges trained on the real training data, BLEU/chrF of captions, and likelihood where the family has "
        "one. Writes JSON and a Markdown table beside it."))
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmgen fit`")
    parser.add_argument("--config", default=None, help="config whose `data` section rebuilds the datamodule "
                                                       "(default: the datamodule stored in the checkpoint)")
    parser.add_argument("--out", required=True, help="report path (.json); a .md table is written beside it")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="samples generated at once")
    parser.add_argument("--direction", action="append", default=None,
                        help="direction to score, e.g. 'text->image', or --direction=->image for unconditional "
                             "samples (repeatable; default: every direction the model serves)")
    parser.add_argument("--inception", nargs="?", const=True, default=None, metavar="WEIGHTS",
                        help="add Inception-v3 FID/KID/IS for images; weights from WEIGHTS, else "
                             "$MMGEN_INCEPTION_WEIGHTS, else torch-fidelity's cache (never downloaded)")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.ckpt, args.config, args.split, args.limit, args.seed, inception=args.inception,
                          batch_size=args.batch_size, directions=args.direction)
    except (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError) as error:
        raise SystemExit(f"mmgen evaluate: {error}") from error
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))

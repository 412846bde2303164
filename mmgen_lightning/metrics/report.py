"""``mmgen evaluate``: one report per checkpoint, as JSON and as a Markdown table.

The datamodule is rebuilt from the arguments stored in the checkpoint (or from ``--config``),
judges are trained once on its real training split and cached, and every direction the model
serves between two modalities with shared attributes is scored for coherence on ``--split``.
Families with a likelihood add it (the VAE's IWAE bound, in nats per sample).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from mmgen_lightning.metrics.coherence import coherence, observable
from mmgen_lightning.metrics.judges import JUDGED_ATTRIBUTES, get_judge
from mmgen_lightning.models.base import CHECKPOINT_KEY, load_generator

JUDGEABLE = ("image", "audio", "video")


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


def served_directions(model, spec: dict[str, Any]) -> list[str]:
    """Single-source directions the model serves whose two sides share an observable attribute."""
    names, dataset, modalities = list(spec["attribute_names"]), spec["dataset"], spec["modalities"]
    directions = []
    for target in model.output_modalities:
        for source in model.condition_modalities:
            if source == target or not model.serves((source,), target):
                continue
            if target in JUDGEABLE and (dataset, target) not in JUDGED_ATTRIBUTES:
                continue
            shared = set(observable(dataset, source, names, modalities)) & set(observable(dataset, target, names, modalities))
            if shared:
                directions.append(f"{source}->{target}")
    return directions


@torch.no_grad()
def likelihood(model, datamodule, split: str, limit: int | None) -> dict[str, float] | None:
    if not hasattr(model, "log_importance_weights"):
        return None
    total, count, samples = 0.0, 0, model.hparams.iwae_samples
    for batch in DataLoader(datamodule.dataset(split), batch_size=128):
        log_w = model.log_importance_weights(batch, samples)
        total += (torch.logsumexp(log_w, 0) - math.log(samples)).sum().item()
        count += log_w.shape[1]
        if limit and count >= limit:
            break
    return {f"iwae_{samples}_nats_per_sample": total / count, "samples": count}


def evaluate(ckpt: str | Path, config: str | Path | None = None, split: str = "test", limit: int | None = None,
             seed: int = 0) -> dict[str, Any]:
    started = time.time()
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, config)
    spec = datamodule.data_spec
    directions = served_directions(model, spec)
    needed = {d.split("->")[1] for d in directions} & set(JUDGEABLE)
    judges = {m: get_judge(datamodule, m, seed=seed) for m in sorted(needed)}
    torch.manual_seed(seed)
    report: dict[str, Any] = {"checkpoint": str(ckpt), "family": type(model).__name__, "dataset": spec["dataset"],
                              "split": split, "coherence": [coherence(model, datamodule, d, judges, split, limit)
                                                            for d in directions]}
    report["likelihood"] = likelihood(model, datamodule, split, limit)
    report["seconds"] = round(time.time() - started, 1)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### {report['family']} on {report['dataset']} ({report['split']} split)", "",
             "| direction | samples | compared attributes | accuracy (all attributes right) |",
             "|---|---|---|---|"]
    for row in report["coherence"]:
        lines.append(f"| {row['direction']} | {row['samples']} | {', '.join(row['attributes'])} | {row['accuracy']:.3f} |")
    if report.get("likelihood"):
        lines += ["", "| likelihood | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in report["likelihood"].items()]
    return "\n".join(lines) + "\n"


def evaluate_cli(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="mmgen evaluate", description=(
        "Score a checkpoint: cross-modal coherence by judges trained on the real training data, "
        "and likelihood where the family has one. Writes JSON and a Markdown table beside it."))
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmgen fit`")
    parser.add_argument("--config", default=None, help="config whose `data` section rebuilds the datamodule "
                                                       "(default: the datamodule stored in the checkpoint)")
    parser.add_argument("--out", required=True, help="report path (.json); a .md table is written beside it")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.ckpt, args.config, args.split, args.limit, args.seed)
    except (ValueError, KeyError, FileNotFoundError) as error:
        raise SystemExit(f"mmgen evaluate: {error}") from error
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))

"""Train a Captioner recipe within its wall-clock budget, then caption the held-out test split.

    python benchmarks/captioner_quality.py --config configs/captioner/digits.yaml [--skip-fit]

The recipe trains with `mmgen fit` (its `max_time` is the budget). The test split is never seen in
training or in model selection (`last.ckpt` is scored). Each test input gets one greedy caption; the
datamodule's caption parser (its `AttributeReading`) reads the attributes it states, which are compared with the
ground-truth `attributes`. Scored attributes: the model's `scored_attributes`, else every attribute
the reference captions state.

Writes benchmarks/results/captioner_<name>.json: training time and steps, the share of captions
stating every scored attribute right, per-attribute accuracy, BLEU, chrF, perplexity, examples,
and the machine's load average (the machine is shared, so throughput varies between runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from torchmetrics.text import BLEUScore, CHRFScore

from mmgen_lightning.datamodules.attributes import describe
from mmgen_lightning.models.base import CHECKPOINT_KEY, load_generator

ROOT = Path(__file__).resolve().parents[1]


def rebuild_datamodule(checkpoint_path: Path):
    """The datamodule the checkpoint was trained on, from the arguments the checkpoint carries."""
    extras = torch.load(checkpoint_path, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]["datamodule"]
    module_name, _, class_name = extras["class_path"].rpartition(".")
    module = importlib.import_module(module_name)
    arguments = {k: v for k, v in extras["init_args"].items() if not k.startswith("_")}  # drops the CLI's _class_path
    return getattr(module, class_name)(**arguments), module


@torch.no_grad()
def score(model, datamodule, parse_caption, batch_size: int = 128) -> dict:
    names, options = list(model.spec("attribute_names")), model.config.validation
    bleu, chrf = BLEUScore(n_gram=options.bleu_n_gram, smooth=True), CHRFScore()
    hypotheses, references, attributes, log_likelihood, tokens = [], [], [], 0.0, 0
    loader = DataLoader(datamodule.dataset("test"), batch_size=batch_size)
    for batch in loader:
        condition = {model.modality: batch[model.modality]}
        generated = model.generate(condition, len(batch["text"]))["text"]
        hypotheses += model.tokenizer.decode(generated)
        references += model.tokenizer.decode(batch["text"])
        attributes.append(batch["attributes"])
        log_likelihood += model.log_likelihood(batch).log_prob.sum().item()
        tokens += int(batch["text_mask"][:, 1:].sum())
    attributes = torch.cat(attributes)
    scored = list(options.scored_attributes or []) or sorted(
        {name for reference in references for name in (parse_caption(reference) or {})}, key=names.index)
    parsed = [parse_caption(text) or {} for text in hypotheses]
    right = torch.tensor([[said.get(name) == int(truth[names.index(name)]) for name in scored]
                          for said, truth in zip(parsed, attributes)])
    bleu.update(hypotheses, [[r] for r in references])
    chrf.update(hypotheses, [[r] for r in references])
    return {"test_size": len(hypotheses), "scored_attributes": scored,
            "all_attributes_correct": round(right.all(1).float().mean().item(), 4),
            "attribute_accuracy": {name: round(right[:, i].float().mean().item(), 4) for i, name in enumerate(scored)},
            "unreadable_captions": sum(not p for p in parsed),
            f"bleu_{options.bleu_n_gram}": round(bleu.compute().item(), 4), "chrf": round(chrf.compute().item(), 4),
            "perplexity": round(float(torch.tensor(-log_likelihood / tokens).exp()), 4),
            "examples": [{"reference": r, "generated": h} for r, h in zip(references[:8], hypotheses[:8])]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/captioner/digits.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="score the existing last.ckpt")
    parser.add_argument("--threads", type=int, default=1, help=(
        "torch (OpenMP) threads for training and scoring. Default 1: on a shared 2-core machine two OpenMP "
        "threads stall at every parallel region while another process holds a core"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / args.config).read_text())
    ckpt = ROOT / config["trainer"]["callbacks"][0]["init_args"]["dirpath"] / "last.ckpt"
    name = Path(args.config).stem
    load_before = os.getloadavg()
    train_seconds = None
    if not args.skip_fit:
        if ckpt.exists():
            ckpt.unlink()  # never score a stale checkpoint
        started = time.time()
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", args.config,
                        "--trainer.enable_progress_bar", "false"], check=True, cwd=ROOT, env=environment)
        train_seconds = round(time.time() - started, 1)
    load_after = os.getloadavg()
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt)
    datamodule, module = rebuild_datamodule(ckpt)
    started = time.time()
    report = score(model, datamodule, describe(datamodule).parse_caption)
    report = {"config": args.config, "modality": model.modality, "dataset": model.spec("dataset"),
              "train_seconds_including_startup": train_seconds, "max_time": config["trainer"].get("max_time"),
              "steps": checkpoint["global_step"], "epochs": checkpoint["epoch"] + 1,
              "decoding": "greedy", "scoring_seconds": round(time.time() - started, 1), **report,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "torch_threads": args.threads,
              "load_average_1min_before_and_after_training": [round(load_before[0], 2), round(load_after[0], 2)],
              "torch": torch.__version__}
    out = ROOT / "benchmarks" / "results" / f"captioner_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Train both stages of the two-stage recipe within their wall-clock budgets, then score them on the
held-out test split.

    python benchmarks/tokens_quality.py --vqvae-config configs/vqvae/digits.yaml \
        --config configs/tokens/digits.yaml [--skip-fit]

Stage 1 (`mmgen fit` of the VQVAE recipe, its `max_time` is the budget) is scored by codebook usage
(share of the K codes used at least once) and perplexity on the train and test splits, reconstruction
MSE, and the judge's accuracy on reconstructions (the ceiling stage 2 can reach). Stage 2 (`mmgen fit`
of the TokenTransformer recipe, which reads stage 1's last.ckpt) is loaded with `load_generator` alone,
then:

- text -> image: one image per held-out test caption, read by the image judge (a classifier trained on
  the real training split, `metrics/judges.py`); accuracy = every attribute the judge reads (the digit;
  Shapes' shape, colour, size, position) is the caption's. Repeated for each guidance scale ("none" =
  plain conditional sampling) with diversity: the mean pairwise distance of judge features between
  samples asked for the same attributes, divided by the same number for the real test images with
  those attributes (1 = as varied as the real data), and the share of distinct code sequences.
- image -> text: one greedy caption per held-out test image; accuracy = the datamodule's
  `parse_caption` reads every attribute the image shows, right.

Writes benchmarks/results/tokens_<name>.json (`<name>` = the stage-2 config's file name).
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

from mmgen_lightning.datamodules.attributes import describe
from mmgen_lightning.metrics.judges import get_judge, judged_attributes
from mmgen_lightning.models.base import CHECKPOINT_KEY, load_generator
from mmgen_lightning.models.token_transformer import TokenSampling

ROOT = Path(__file__).resolve().parents[1]


def rebuild_datamodule(checkpoint_path: Path):
    """The datamodule the checkpoint was trained on, from the arguments the checkpoint carries."""
    extras = torch.load(checkpoint_path, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]["datamodule"]
    module_name, _, class_name = extras["class_path"].rpartition(".")
    module = importlib.import_module(module_name)
    arguments = {k: v for k, v in extras["init_args"].items() if not k.startswith("_")}
    return getattr(module, class_name)(**arguments), module


def last_checkpoint(config_path: str) -> Path:
    config = yaml.safe_load((ROOT / config_path).read_text())
    return ROOT / config["trainer"]["callbacks"][0]["init_args"]["dirpath"] / "last.ckpt"


def fit(config_path: str, threads: int) -> float:
    """`mmgen fit` of a recipe from scratch (its stale last.ckpt removed first); returns seconds."""
    ckpt = last_checkpoint(config_path)
    if ckpt.exists():
        ckpt.unlink()
    started = time.time()
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", config_path,
                    "--trainer.enable_progress_bar", "false"], check=True, cwd=ROOT, env=environment)
    return round(time.time() - started, 1)


def whole_split(datamodule, split: str) -> dict[str, torch.Tensor]:
    dataset = datamodule.dataset(split)
    return next(iter(DataLoader(dataset, batch_size=len(dataset))))


@torch.no_grad()
def score_stage1(vqvae, datamodule, judge) -> dict:
    report = {}
    for split in ("train", "test"):
        batch = whole_split(datamodule, split)
        codes = vqvae.encode_codes(batch)
        counts = torch.bincount(codes.flatten(), minlength=vqvae.num_codes)
        p = counts.double() / counts.sum()
        entry = {"codebook_usage": round((counts > 0).float().mean().item(), 4),
                 "perplexity": round(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item(), 2)}
        if split == "test" and vqvae.modality == "image":
            reconstruction = vqvae.decode_codes(codes)
            entry["reconstruction_mse"] = round((reconstruction - batch["image"]).pow(2).mean().item(), 5)
            truth = judge.targets(batch["attributes"])
            entry["judge_accuracy_on_reconstructions"] = round(
                (judge.predict(reconstruction) == truth).all(1).float().mean().item(), 4)
            entry["judge_accuracy_on_real"] = round((judge.predict(batch["image"]) == truth).all(1).float().mean().item(), 4)
        report[split] = entry
    return {"num_codes": vqvae.num_codes, "grid": list(vqvae.grid), **report}


def feature_spread(features: torch.Tensor, groups: torch.Tensor) -> float:
    """Mean over groups of the mean pairwise Euclidean distance between the group's feature rows."""
    spreads = []
    for value in groups.unique():
        rows = features[groups == value]
        if len(rows) > 1:
            distances = torch.cdist(rows, rows)
            spreads.append(distances.sum() / (len(rows) * (len(rows) - 1)))
    return torch.stack(spreads).mean().item()


@torch.no_grad()
def score_text_to_image(model, batch, judge, settings: list[dict | None], seed: int, batch_size: int = 256) -> list[dict]:
    """One row per sampling setting (``None``: the model's ``sampling`` defaults, what ``mmgen generate``
    and ``mmgen evaluate`` use)."""
    truth = judge.targets(batch["attributes"])  # B,K of the attributes the judge reads
    groups = torch.unique(truth, dim=0, return_inverse=True)[1]
    real_spread = feature_spread(judge.features(batch["image"]), groups)
    recipe = {k: v for k, v in model.config.sampling.to_dict().items() if v != TokenSampling().to_dict()[k]}
    rows = []
    for knobs in settings:
        started = time.time()
        images = []
        for start in range(0, len(truth), batch_size):
            part = slice(start, start + batch_size)
            conditions = {"text": batch["text"][part], "text_mask": batch["text_mask"][part]}
            images.append(model.generate(conditions, num_samples=len(truth[part]), to="image", seed=seed + start,
                                         **(knobs or {}))["image"])
        images = torch.cat(images)
        right = judge.predict(images) == truth
        codes = model.vqvae.encode_codes({"image": images})
        rows.append({"sampling": "model defaults " + json.dumps(recipe) if knobs is None
                     else {k: ("none" if v is None else v) for k, v in knobs.items()},
                     "accuracy": round(right.all(1).float().mean().item(), 4),
                     **({f"accuracy_{name}": round(right[:, i].float().mean().item(), 4)
                         for i, name in enumerate(judge.attributes)} if len(judge.attributes) > 1 else {}),
                     "diversity_vs_real": round(feature_spread(judge.features(images), groups) / real_spread, 4),
                     "distinct_code_sequences": round(len({tuple(c) for c in codes.tolist()}) / len(codes), 4),
                     "seconds": round(time.time() - started, 1)})
    return rows


@torch.no_grad()
def score_image_to_text(model, batch, judge, parse_caption) -> dict:
    """Greedy captions of real test images; a caption is right when it states every attribute the
    image shows (the judge's attributes) with the true value."""
    started = time.time()
    generated = model.generate({model.modality: batch[model.modality]}, num_samples=len(batch["text"]), to="text")
    captions = model.tokenizer.decode(generated["text"])
    truth = judge.targets(batch["attributes"]).tolist()
    parsed = [parse_caption(text) or {} for text in captions]
    right = torch.tensor([[said.get(name, -1) == value for name, value in zip(judge.attributes, row)]
                          for said, row in zip(parsed, truth)])
    return {"decoding": "greedy", "scored_attributes": list(judge.attributes),
            "accuracy": round(right.all(1).float().mean().item(), 4),
            **({f"accuracy_{name}": round(right[:, i].float().mean().item(), 4)
                for i, name in enumerate(judge.attributes)} if len(judge.attributes) > 1 else {}),
            "unreadable_captions": sum(not p for p in parsed), "seconds": round(time.time() - started, 1),
            "examples": [{"attributes": row, "generated": c} for row, c in zip(truth[:8], captions[:8])]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vqvae-config", default="configs/vqvae/digits.yaml")
    parser.add_argument("--config", default="configs/tokens/digits.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="score the existing last.ckpt files")
    parser.add_argument("--scales", default="none,1.5,3,5", help="guidance scales of the table ('none' = plain)")
    parser.add_argument("--top-ks", default="none,16", help="top-k values of the table ('none' = all tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help=(
        "torch (OpenMP) threads for training and scoring; 1 on a shared 2-core machine"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    seconds = {"stage1": None, "stage2": None}
    if not args.skip_fit:
        seconds["stage1"] = fit(args.vqvae_config, args.threads)
        seconds["stage2"] = fit(args.config, args.threads)
    load_after = os.getloadavg()
    stage1_ckpt, stage2_ckpt = last_checkpoint(args.vqvae_config), last_checkpoint(args.config)
    model = load_generator(stage2_ckpt)  # both stages from the stage-2 checkpoint alone
    datamodule, module = rebuild_datamodule(stage2_ckpt)
    if not judged_attributes(datamodule, model.modality):
        raise SystemExit(f"no judge reads {model.modality!r} on {model.spec('dataset')!r}; nothing to score")
    judge = get_judge(datamodule, model.modality)
    test = whole_split(datamodule, "test")
    torch.manual_seed(args.seed)
    scales = [None if s == "none" else float(s) for s in args.scales.split(",")]
    top_ks = [None if k == "none" else int(k) for k in args.top_ks.split(",")]
    settings = [{"temperature": 1.0, "top_k": k, "guidance_scale": s} for k in top_ks for s in scales] + [None]
    stage1 = torch.load(stage1_ckpt, map_location="cpu", weights_only=True)
    stage2 = torch.load(stage2_ckpt, map_location="cpu", weights_only=True)
    report = {
        "configs": [args.vqvae_config, args.config], "dataset": model.spec("dataset"), "test_size": len(test["text"]),
        "train_seconds_including_startup": seconds,
        "max_time": [yaml.safe_load((ROOT / c).read_text())["trainer"].get("max_time")
                     for c in (args.vqvae_config, args.config)],
        "steps": {"stage1": stage1["global_step"], "stage2": stage2["global_step"]},
        "stage1": score_stage1(model.vqvae, datamodule, judge),
        "text_to_image": {"samples": "one per test caption",
                          "by_sampling": score_text_to_image(model, test, judge, settings, args.seed)},
        "image_to_text": score_image_to_text(model, test, judge, describe(datamodule).parse_caption),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared by several jobs; "
                   f"trained and scored with {args.threads} torch thread(s), which is conservative: a quiet "
                   "2-core machine gets more steps in the same max_time",
        "load_average_1min_before_and_after_training": [round(load_before[0], 2), round(load_after[0], 2)],
        "torch": torch.__version__,
    }
    out = ROOT / "benchmarks" / "results" / f"tokens_{Path(args.config).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Quality within one fixed wall-clock budget, every family on digits, one table.

    python benchmarks/budget_quality.py [--budget 75] [--families vae gan captioner vqvae tokens]

Each family's digits recipe (``configs/<family>/digits.yaml``) trains as ``mmgen fit`` with
``trainer.max_time`` set to ``--budget`` seconds (its checkpoints and logs go to runs/budget/, so
the recipes' own runs are left alone), then ``mmgen evaluate``'s scorer reads the test split:
conditional accuracy (coherence) of every conditional direction into image or text (for the VQVAE,
a tokenizer, its image->image reconstruction), read by the judges trained on real training data, and
judge-FID for image targets. The TokenTransformer's
stage 1 is the VQVAE trained just before it in this run, so its row's budget is the sum of both.
A family whose recipe is missing or fails is listed with its error. Writes
benchmarks/results/budget_quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mmgen_lightning.metrics.evaluator import default_directions
from mmgen_lightning.metrics.report import evaluate, load_datamodule
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "gan", "captioner", "vqvae", "tokens")


def budget_config(family: str, seconds: int, stage_one: Path | None) -> dict:
    """The recipe with ``max_time``, and its checkpoint and log folders moved under runs/budget/."""
    config = yaml.safe_load((ROOT / "configs" / family / "digits.yaml").read_text())
    trainer = config["trainer"]
    trainer["max_time"] = time.strftime("00:%H:%M:%S", time.gmtime(seconds))
    trainer["default_root_dir"] = f"runs/budget/{family}"
    trainer["enable_progress_bar"] = False
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"].setdefault("init_args", {}).update({"save_dir": "runs/budget", "name": family})
    for callback in trainer.get("callbacks", []):
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = f"runs/budget/{family}/checkpoints"
    if family == "tokens" and stage_one is not None:
        config["model"]["init_args"]["vqvae_checkpoint"] = str(stage_one)
    return config


def scored_directions(ckpt: Path) -> list[str]:
    """Conditional directions into image or text (unconditional and audio targets are left to the
    full reports, to keep the run short)."""
    model, datamodule = load_generator(ckpt), load_datamodule(ckpt)
    directions = [d for d in default_directions(model, datamodule)
                  if not d.startswith("->") and d.split("->")[1] in ("image", "text")]
    # a stage-1 tokenizer (VQVAE) serves only reconstruction: score that, through its codes
    return directions or [f"{m}->{m}" for m in ("image", "text") if model.serves((m,), m)]


def run_family(family: str, seconds: int, stage_one: Path | None, scratch: Path) -> dict:
    # a last.ckpt left by an earlier run would be kept (ModelCheckpoint writes last-v1.ckpt) and scored
    shutil.rmtree(ROOT / "runs" / "budget" / family, ignore_errors=True)
    config_path = scratch / f"{family}.yaml"
    config_path.write_text(yaml.safe_dump(budget_config(family, seconds, stage_one)))
    started = time.time()
    fit = subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", str(config_path)],
                         cwd=ROOT, capture_output=True, text=True)
    row = {"family": family, "recipe": f"configs/{family}/digits.yaml", "budget_s": seconds,
           "fit_seconds_including_startup": round(time.time() - started, 1)}
    ckpt = ROOT / "runs" / "budget" / family / "checkpoints" / "last.ckpt"
    if fit.returncode != 0 or not ckpt.is_file():
        raised = [line for line in fit.stderr.splitlines() if "Error" in line or "error:" in line]
        row["error"] = f"fit exit {fit.returncode}: " + (raised[-1][:400] if raised else fit.stderr.strip()[-400:])
        return row
    row["steps"] = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    directions = scored_directions(ckpt)
    if not directions:
        row["note"] = "no conditional direction into image or text to score"
        return row
    report = evaluate(ckpt, directions=directions)
    row["coherence"] = {r["direction"]: r["accuracy"] for r in report["coherence"]}
    row["real_data"] = {r["direction"]: r["real_data"] for r in report["coherence"]}
    row["fid_judge"] = {direction: scores["judge"]["fid"] for direction, scores in report.get("quality", {}).items()
                        if "judge" in scores and "fid" in scores["judge"]}
    row["evaluate_seconds"] = report["seconds"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| family | budget | steps | direction | accuracy (real data) | judge-FID |", "|---|---|---|---|---|---|"]
    for row in rows:
        if "coherence" not in row:
            lines.append(f"| {row['family']} | {row['budget_s']} s | {row.get('steps', '-')} | - | "
                         f"{row.get('error', row.get('note', ''))[:300].replace('|', '/').replace(chr(10), ' ')} | - |")
            continue
        for direction, accuracy in row["coherence"].items():
            fid = row["fid_judge"].get(direction)
            lines.append(f"| {row['family']} | {row['budget_s']} s | {row['steps']} | {direction} | "
                         f"{accuracy:.3f} ({row['real_data'][direction]:.3f}) | "
                         f"{'-' if fid is None else f'{fid:.1f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=75, help="training seconds per family")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    rows, stage_one = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for family in args.families:
            if not (ROOT / "configs" / family / "digits.yaml").is_file():
                rows.append({"family": family, "budget_s": args.budget, "note": "no digits recipe"})
                continue
            if family == "tokens" and stage_one is None:
                rows.append({"family": family, "budget_s": args.budget, "note": "needs the vqvae row first"})
                continue
            print(f"{family}: training for {args.budget} s", flush=True)
            try:
                row = run_family(family, args.budget, stage_one, Path(scratch))
            except Exception as error:  # one family's failure must not hide the others' rows
                row = {"family": family, "budget_s": args.budget, "error": f"{type(error).__name__}: {error}"}
            if family == "vqvae" and "error" not in row:
                stage_one = ROOT / "runs" / "budget" / "vqvae" / "checkpoints" / "last.ckpt"
            if family == "tokens":
                row["note"] = f"stage 1 is the {args.budget} s VQVAE above: {2 * args.budget} s in all"
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    report = {"command": f"python benchmarks/budget_quality.py --budget {args.budget} --families "
                         f"{' '.join(args.families)}", "rows": rows, "split": "test",
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
                         "(shared machine: fewer steps fit in the budget than on a quiet one)",
              "torch": torch.__version__}
    out = ROOT / "benchmarks" / "results" / "budget_quality.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""Time to quality: when does a recipe first reach its held-out score, in wall-clock training time?

    python benchmarks/time_to_quality.py --config configs/flow/shapes.yaml [--every 20] [--budget 180]
                                         [--tag baseline] [--fit-args --model.init_args.optimization.lr=4e-3 ...]
    python benchmarks/time_to_quality.py ... --every-steps 250 --max-steps 2000   # quality per step

One run: ``mmgen fit`` of the recipe (one torch thread, from an empty folder, exactly as a user runs it),
with an extra ``ModelCheckpoint`` that keeps a snapshot every ``--every`` seconds of training
(Lightning's ``train_time_interval``; a snapshot holds the EMA weights, as the recipe's own
checkpoint does). After training, every snapshot is scored on ``--captions`` held-out test captions
with the recipe's sampling settings by the attribute judge (trained only on real training images,
``metrics/judges.py``): every attribute at once, each attribute, and the lowest per-class diversity
ratio (samples' spread over the real images' spread, per class of the first attribute, at 8 px).

Times: ``train_seconds`` is Lightning's own timer at the snapshot (what ``max_time`` counts, from the
first training step); ``wall_seconds`` adds everything before it (imports, data and tokenizer set-up),
measured from launching the command to the snapshot's file. The table reads the last snapshot at or
before 1, 2, 3, 5 and 10 minutes of training. Scoring runs after training, so it costs the run nothing.

Writes benchmarks/results/ttq_<config name>_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from flow_quality import diversity, generate_all, judged, whole_split

from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
MARKS = (60, 120, 180, 300, 600)


def train(config_path: str, folder: Path, every: int, budget: int | None, fit_args: list[str],
          every_steps: int | None = None, max_steps: int | None = None) -> tuple[float, Path]:
    """Fit the recipe with snapshots every ``every`` s (or ``every_steps`` steps, up to ``max_steps``) into
    ``folder``; returns the launch time and the log."""
    log = folder / "fit.log"
    interval = ([f"--trainer.callbacks.every_n_train_steps={every_steps}"] if every_steps else
                [f"--trainer.callbacks.train_time_interval=0:00:{every:02d}"])
    command = [sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", config_path,
               "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(folder / "run"),
               "--trainer.logger.init_args.save_dir", str(folder / "run"),
               "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
               f"--trainer.callbacks.dirpath={folder / 'snapshots'}", "--trainer.callbacks.filename={step}",
               "--trainer.callbacks.save_top_k=-1", *interval]
    if max_steps is not None:  # steps, not time: quality per step does not depend on the machine's load
        command += ["--trainer.max_steps", str(max_steps), "--trainer.max_time", "null"]
    elif budget is not None:
        command += ["--trainer.max_time", f"00:00:{budget // 60:02d}:{budget % 60:02d}"]
    launched = time.time()
    with log.open("w") as stream:
        subprocess.run(command + fit_args, check=True, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return launched, log


def score(snapshot: Path, datamodule, judge, test: dict, train: dict, captions: int) -> dict:
    model = load_generator(snapshot)
    keys = [model.condition] + (["text_mask"] if model.condition == "text" else [])
    conditions = {k: test[k][:captions] for k in keys}
    truth = judge.targets(test["attributes"][:captions])
    samples, seconds = generate_all(model, conditions)
    per_class = diversity(judge, datamodule, samples, truth, train, 8)
    return {**judged(judge, samples, truth), "min_diversity_ratio": min(r["diversity_ratio"] for r in per_class),
            "sampling_images_per_second": samples.shape[0] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/flow/shapes.yaml")
    parser.add_argument("--every", type=int, default=20, help="seconds of training between snapshots (< 60)")
    parser.add_argument("--budget", type=int, default=None, help="training seconds (default: the recipe's max_time)")
    parser.add_argument("--captions", type=int, default=500, help="held-out test captions scored per snapshot")
    parser.add_argument("--every-steps", type=int, default=None, help="snapshot every this many steps instead")
    parser.add_argument("--max-steps", type=int, default=None, help="train this many steps instead of the budget")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--keep", default=None, help="keep the run's folder here instead of a temporary one")
    parser.add_argument("--scored-run", default=None, help="score the snapshots of an earlier run's folder (no fit)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    if not 1 <= args.every < 60:
        parser.error("--every must be 1-59 seconds")
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    if args.scored_run:
        folder = Path(args.scored_run)
        launched = (folder / "fit.log").stat().st_ctime
    else:
        folder = Path(args.keep or tempfile.mkdtemp(prefix="ttq_"))
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        launched, _ = train(args.config, folder, args.every, args.budget, args.fit_args, args.every_steps,
                            args.max_steps)
    snapshots = sorted((folder / "snapshots").glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    datamodule = load_datamodule(snapshots[-1], ROOT / args.config)
    judge = get_judge(datamodule, "image")
    test, train_split = whole_split(datamodule, "test"), whole_split(datamodule, "train")
    batch_size = config["data"]["init_args"].get("batch_size")
    rows = []
    for snapshot in snapshots:
        stored = torch.load(snapshot, map_location="cpu", weights_only=True)
        timer = next((state for name, state in stored.get("callbacks", {}).items() if name.startswith("Timer")), None)
        row = {"step": stored["global_step"], "epoch": stored["epoch"],
               "train_seconds": round(timer["time_elapsed"]["train"], 1) if timer else None,
               "wall_seconds": round(snapshot.stat().st_mtime - launched, 1)}
        row.update(score(snapshot, datamodule, judge, test, train_split, args.captions))
        row["train_images_per_second"] = row["step"] * batch_size / row["train_seconds"] if row["train_seconds"] else None
        rows.append(row)
        seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"
        print(f"step {row['step']:5d} train {seconds:>6} s wall {row['wall_seconds']:6.1f} s: "
              f"all {row['accuracy']:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in row["accuracy_per_attribute"].items())
              + f" div {row['min_diversity_ratio']:.2f}", flush=True)
    at = {}
    for mark in MARKS:
        reached = [r for r in rows if r["train_seconds"] is not None and r["train_seconds"] <= mark + 1]
        if reached and rows[-1]["train_seconds"] >= mark - args.every:
            best = reached[-1]
            at[f"{mark // 60} min"] = {k: best[k] for k in ("step", "train_seconds", "accuracy", "min_diversity_ratio")}
    report = {"command": "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:]), "config": args.config,
              "tag": args.tag, "fit_args": args.fit_args, "batch_size": batch_size, "captions": args.captions,
              "machine": f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS=1",
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
              "judged_attributes": list(judge.attributes), "at": at, "snapshots": rows}
    out = ROOT / "benchmarks" / "results" / f"ttq_{Path(args.config).stem}_{args.tag}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(at, indent=1))
    print(f"wrote {out}")
    if args.keep is None and args.scored_run is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The FLOP/s account: how much of this machine's matmul peak each recipe's training step reaches.

    python benchmarks/flops.py [--recipes configs/flow/shapes.yaml ...] [--steps 40] [--warmup 10]

For each recipe:

* model FLOPs per training step (forward + backward, every family the same way: ``trainer.fit`` of two
  steps inside ``torch.utils.flop_counter.FlopCounterMode``, halved; it counts matmuls, convolutions and
  attention, the work that matters, not element-wise ops);
* the step time in the recipe's own loop: Lightning with the recipe's trainer options (precision,
  ``log_every_n_steps``, its TensorBoard logger) and its per-step callbacks (EMA), without the
  epoch-end ones (checkpoints, sample grids), data loading included: the median time between the ends
  of consecutive steps after ``--warmup`` steps;
* achieved GFLOP/s = FLOPs / step time, beside the single-thread peak of this machine measured here:
  the best of square matmuls (1024 and 2048) in float32 and in bfloat16.

One torch thread, as the recipes are measured. Writes benchmarks/results/flops.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from recipe_run import StepClock, build_recipe, instantiate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = ["configs/flow/shapes.yaml", "configs/flow/digits.yaml", "configs/quickstart.yaml",
                   "configs/gan/digits.yaml", "configs/captioner/digits.yaml", "configs/vqvae/digits.yaml",
                   "configs/aligner/digits.yaml"]
#: callbacks that act at epoch ends or write files: not part of a training step
EPOCH_END = ("ModelCheckpoint", "SampleLogger", "CaptionAttentionLogger", "AttentionMapLogger", "EvaluationCallback")


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), repeats: int = 5) -> float:
    """Best GFLOP/s of ``n x n @ n x n`` on one thread."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best


def trainer_for(config: dict, steps: int, callbacks: list, logger=False) -> L.Trainer:
    options = config.get("trainer", {})
    return L.Trainer(max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1,
                     precision=options.get("precision", "32-true"),
                     log_every_n_steps=options.get("log_every_n_steps", 50), logger=logger,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks)


def step_callbacks(config: dict) -> list:
    return [instantiate(spec) for spec in config.get("trainer", {}).get("callbacks", [])
            if spec["class_path"].rsplit(".", 1)[-1] not in EPOCH_END]


def measure(recipe: str, steps: int, warmup: int) -> dict:
    config = yaml.safe_load((ROOT / recipe).read_text())
    torch.manual_seed(0)
    model, datamodule = build_recipe(config)
    with FlopCounterMode(display=False) as counter:
        trainer_for(config, 2, []).fit(model, datamodule=datamodule)
    flops = counter.get_total_flops() / 2
    torch.manual_seed(0)
    model, datamodule = build_recipe(config)
    clock = StepClock()
    with tempfile.TemporaryDirectory() as folder:
        logger = L.pytorch.loggers.TensorBoardLogger(folder, name="flops")
        trainer_for(config, warmup + steps, [*step_callbacks(config), clock], logger).fit(model, datamodule=datamodule)
    gaps = clock.gaps(warmup)
    step_seconds = statistics.median(gaps)
    batch = config["data"]["init_args"].get("batch_size")
    return {"recipe": recipe, "family": type(model).__name__, "precision": trainer_for(config, 1, []).precision,
            "batch_size": batch, "gflop_per_step": flops / 1e9, "step_ms": 1000 * step_seconds,
            "steps_per_second": 1 / step_seconds, "gflops_per_second": flops / step_seconds / 1e9,
            "timed_steps": len(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "flops.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    peak = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"single-thread matmul peak: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f}", flush=True)
    rows = []
    for recipe in args.recipes:
        row = measure(recipe, args.steps, args.warmup)
        reference = peak["bfloat16" if "bf16" in str(row["precision"]) else "float32"]
        row["fraction_of_peak"] = row["gflops_per_second"] / reference
        rows.append(row)
        print(f"{recipe}: {row['gflop_per_step']:.2f} GFLOP/step, {row['step_ms']:.1f} ms/step, "
              f"{row['gflops_per_second']:.1f} GFLOP/s ({row['precision']}, {100 * row['fraction_of_peak']:.0f}% of peak)",
              flush=True)
    report = {"command": "python benchmarks/flops.py " + " ".join(sys.argv[1:]), "matmul_peak_gflops": peak,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread",
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
              "recipes": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

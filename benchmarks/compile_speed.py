"""Eager vs ``torch.compile`` (CompileNetworks / compile_networks) for each family's recipe: training
steps/s, sampling samples/s, the one-off compile time and how many graphs and recompilations it took.

    python benchmarks/compile_speed.py [--families vae gan] [--steps 40] [--warmup 10] [--rounds 3]

Each family is built from ``configs/<family>/digits.yaml`` twice from the same initial weights; the
eager and compiled copies then train in alternating rounds (eager, compiled, eager, ...) so a change
in the machine's load hits both alike. A training step is the family's own ``training_step`` with
backward and optimizer step (manual-optimisation families run their own), timed after ``--warmup``
steps; the first compiled steps, which include compilation, are reported as ``compile_seconds``.
Sampling is ``generate`` on a batch of test conditions. Writes benchmarks/results/compile_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mmgen_lightning.callbacks.compile import CompileNetworks, compile_counters, compile_networks, reset_compile_counters
from overhead import build, load_recipe  # the recipe -> (model, datamodule) builder of the overhead benchmark

ROOT = Path(__file__).resolve().parents[1]
#: the direction whose sampling is measured for each family's digits recipe: target, condition keys
SAMPLING = {"vae": ("image", ["text", "text_mask"]), "gan": ("image", ["label"]),
            "flow": ("image", ["text", "text_mask"]), "captioner": ("text", ["image"]),
            "tokens": ("image", ["text", "text_mask"])}


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def train_round(model, datamodule, steps: int, callbacks: list) -> list[float]:
    timer = StepTimer()
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[*callbacks, timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule.train_dataloader())
    return [start] + timer.ends


def sampling_rate(model, datamodule, target: str, keys: list[str], rounds: int = 3) -> float:
    batch = next(iter(datamodule.val_dataloader()))
    conditions = {k: batch[k] for k in keys}
    count = batch[next(iter(conditions))].shape[0]
    model.generate(conditions, num_samples=count, to=target)  # warm-up (and compilation)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.generate(conditions, num_samples=count, to=target)
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def measure(family: str, steps: int, warmup: int, rounds: int, backend: str) -> dict[str, Any]:
    reset_compile_counters()
    eager, datamodule = build(load_recipe(f"configs/{family}/digits.yaml"))
    compiled = copy.deepcopy(eager)
    callback = CompileNetworks(backend=backend)
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    compile_seconds = None
    for round_index in range(rounds):
        for name, model, callbacks in (("eager", eager, []), ("compiled", compiled, [callback])):
            ends = train_round(model, datamodule, steps + (warmup if round_index == 0 else 0), callbacks)
            durations = [b - a for a, b in zip(ends, ends[1:])]
            if name == "compiled" and compile_seconds is None:
                compile_seconds = sum(durations[:warmup])
            timed = durations[warmup:] if round_index == 0 else durations
            rates[name].append(1.0 / statistics.median(timed))
    counters = compile_counters()
    result: dict[str, Any] = {"family": family, "batch": datamodule.batch_size, "backend": backend,
                              "eager_steps_per_s": statistics.median(rates["eager"]),
                              "compiled_steps_per_s": statistics.median(rates["compiled"]),
                              "compile_seconds": compile_seconds, **counters}
    result["speedup"] = result["compiled_steps_per_s"] / result["eager_steps_per_s"]
    if family in SAMPLING:
        target, keys = SAMPLING[family]
        result["sampling_direction"] = f"{'+'.join(k for k in keys if not k.endswith('_mask'))}->{target}"
        result["eager_samples_per_s"] = sampling_rate(eager, datamodule, target, keys)
        compile_networks(compiled, backend=backend)
        result["compiled_samples_per_s"] = sampling_rate(compiled, datamodule, target, keys)
        result["recompilations_after_sampling"] = compile_counters()["recompilations"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["vae", "gan"])
    parser.add_argument("--steps", type=int, default=40, help="steps per round (the first round adds --warmup)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(f, args.steps, args.warmup, args.rounds, args.backend) for f in args.families]
    print("| family | batch | eager steps/s | compiled steps/s | speed-up | compile s | graphs | recompilations |"
          " eager samples/s | compiled samples/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['family']} | {r['batch']} | {r['eager_steps_per_s']:.2f} | {r['compiled_steps_per_s']:.2f} | "
              f"{r['speedup']:.2f}x | {r['compile_seconds']:.0f} | {r['unique_graphs']} | {r['recompilations']} | "
              f"{r.get('eager_samples_per_s', float('nan')):.0f} | {r.get('compiled_samples_per_s', float('nan')):.0f} |")
    out = ROOT / "benchmarks" / "results" / "compile_speed.json"
    command = "python benchmarks/compile_speed.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items())
    out.write_text(json.dumps({"command": command, "machine": f"{platform.machine()}, {args.threads} threads",
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

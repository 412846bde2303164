"""Seconds per training step of a recipe with each optimizer, in the recipe's own Lightning loop, alternated
in one process so the machine's load falls on every optimizer alike.

    python benchmarks/optimizer_step_time.py [--config configs/flow/shapes.yaml] [--optimizers adamw muon]
                                             [--steps 40] [--rounds 3]

One torch thread. Each round trains a fresh model of the recipe for ``--steps`` steps per optimizer (the
first 5 untimed) and records the median seconds per step; the JSON keeps every round and the median over
rounds. Writes benchmarks/results/optimizer_step_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import lightning as L
import torch
import yaml
from recipe_run import ROOT, StepClock, build_recipe


def step_time(config: dict, optimizer: str, steps: int) -> float:
    config = json.loads(json.dumps(config))
    config["model"]["init_args"].setdefault("optimization", {})["optimizer"] = optimizer
    torch.manual_seed(0)
    model, datamodule = build_recipe(config)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock])
    trainer.fit(model, datamodule=datamodule)
    return statistics.median(clock.gaps(skip=5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/flow/shapes.yaml")
    parser.add_argument("--optimizers", nargs="+", default=["adamw", "muon"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "optimizer_step_time.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    rounds = {name: [] for name in args.optimizers}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name in args.optimizers:
            rounds[name].append(round(step_time(config, name, args.steps), 4))
            print(name, rounds[name][-1], flush=True)
    result = {"command": f"python benchmarks/optimizer_step_time.py --config {args.config} --optimizers "
                         f"{' '.join(args.optimizers)} --steps {args.steps} --rounds {args.rounds}",
              "threads": 1, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "seconds_per_step": {name: {"rounds": times, "median": statistics.median(times)}
                                   for name, times in rounds.items()}}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["seconds_per_step"]))


if __name__ == "__main__":
    main()

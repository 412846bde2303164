"""What the held-out score each recipe logs while training costs: for every recipe, the seconds of one
evaluation by its own ``EvaluationCallback`` or ``HeldOutScoreCallback`` (the former's judges are
trained at the first evaluation and cached, once per data configuration and machine: timed apart; run
with an empty ``MMGEN_CACHE`` to time their training) against the seconds of training between two evaluations, both
measured in the recipe's own Lightning loop with one torch thread.

    python benchmarks/eval_cost.py [--recipes configs/flow/shapes.yaml ...] [--steps 30]

Writes benchmarks/results/eval_cost.json: per recipe the training step time, the evaluation time, the
steps between evaluations (the recipe's validation cadence times the callback's ``every_n_epochs`` or
``every_n_validations``)
and the cost, evaluation time over training time between evaluations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
import yaml

from recipe_run import ROOT, StepClock, build_recipe

from mmgen_lightning.callbacks.evaluation import EvaluationCallback
from mmgen_lightning.callbacks.heldout_score import HeldOutScoreCallback
from mmgen_lightning.metrics.evaluator import flatten


def evaluation_spec(config: dict) -> tuple[type, dict] | None:
    """The recipe's scoring callback class and its arguments."""
    for spec in config["trainer"].get("callbacks", []):
        for kind in (EvaluationCallback, HeldOutScoreCallback):
            if spec["class_path"].endswith(kind.__name__):
                return kind, spec.get("init_args", {})
    return None


def steps_between_evaluations(config: dict, datamodule, every_n: int) -> int:
    """Training steps between two evaluations: the recipe's validation cadence times ``every_n``."""
    trainer = config["trainer"]
    steps_per_epoch = len(datamodule.train_dataloader())
    if isinstance(trainer.get("limit_train_batches"), int):  # the scenes recipes' short epochs
        steps_per_epoch = min(steps_per_epoch, trainer["limit_train_batches"])
    if isinstance(trainer.get("val_check_interval"), int):  # in steps, inside the epoch
        return int(trainer["val_check_interval"]) * every_n
    return steps_per_epoch * int(trainer.get("check_val_every_n_epoch", 1)) * every_n


def measure(path: Path, steps: int) -> dict:
    config = yaml.safe_load(path.read_text())
    found = evaluation_spec(config)
    if found is None:
        return {"recipe": str(path.relative_to(ROOT)), "evaluation": None}
    kind, spec = found
    torch.manual_seed(0)
    model, datamodule = build_recipe(config)
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[clock])
    trainer.fit(model, datamodule=datamodule)
    step_seconds = statistics.mean(clock.gaps(skip=4))  # from the end of the 5th batch

    callback = kind(**spec)
    judges_started = time.perf_counter()
    # the callback's setup reads only these of its trainer: one process fitting to its end (so it trains
    # or loads the judges), no barrier to wait at
    one_process = SimpleNamespace(datamodule=datamodule, is_global_zero=True, global_rank=0, world_size=1,
                                  max_steps=-1, strategy=SimpleNamespace(barrier=lambda name: None))
    callback.setup(one_process, model, "fit")
    judge_seconds = time.perf_counter() - judges_started
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        if kind is EvaluationCallback:
            results = flatten(callback.evaluator.run(model))
            every = spec.get("every_n_epochs", 1)
        else:
            results = callback.measure(model, datamodule)
            every = spec.get("every_n_validations", 1)
    eval_seconds = time.perf_counter() - started
    between = steps_between_evaluations(config, datamodule, every)
    return {"recipe": str(path.relative_to(ROOT)), "evaluation": spec, "seconds_per_step": round(step_seconds, 4),
            "judge_setup_seconds": round(judge_seconds, 1), "evaluation_seconds": round(eval_seconds, 2),
            "steps_between_evaluations": between,
            "cost": round(eval_seconds / (between * step_seconds), 4),
            "logged": sorted(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per recipe (5 warm-up)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/eval_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = [Path(p).resolve() for p in args.recipes] if args.recipes else sorted((ROOT / "configs").glob("*/*.yaml"))
    rows = []
    for path in paths:
        try:
            row = measure(path, args.steps)
        except FileNotFoundError as error:  # a recipe that starts from another's checkpoint (stage 2, a teacher)
            row = {"recipe": str(path.relative_to(ROOT)), "skipped": str(error)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"threads": 1, "recipes": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Training throughput of the ConditionalGAN LightningModule against a plain PyTorch loop of the same
game, measured side by side in one process. The plain loop is built from the family's own objective
functions (``objectives/gan.py``), optimizers (its ``configure_optimizers``), batches and EMA, so it
cannot drift from what the module trains.

    python benchmarks/gan_overhead.py [--config configs/gan/digits.yaml] [--rounds 4] [--steps 40]

The two run in alternating rounds (plain, Lightning, plain, ...) so that a change in the machine's
load hits both alike; each round rebuilds its model from the same initial weights and times every
training step after ``--warmup`` steps, data loading included (the time between the ends of two
consecutive steps). Lightning runs as the recipe does (its EMA callback, TensorBoard logging every
``log_every_n_steps``), without checkpointing, validation or sample logging, which are not part of
a step; the plain loop keeps the same average with ``torch.optim.swa_utils.AveragedModel`` and the
EMA callback's own averaging function. Writes benchmarks/results/gan_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.optim.swa_utils import AveragedModel

from mmgen_lightning.callbacks.ema import EMA, ema_update
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.objectives.gan import discriminator_objective, generator_objective

ROOT = Path(__file__).resolve().parents[1]


def _class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def plain_step(model: ConditionalGAN, batch: dict, optimizers: list, step: int,
               ema: AveragedModel | None = None) -> torch.Tensor:
    """One batch of the game written by hand around the family's objective functions: the discriminator on
    real data and detached fakes, then (every ``n_critic`` batches) the generator through the new
    discriminator, then the average. No toggling, accumulation window or DDP all-reduce: what a user
    would write for one device."""
    optimizer_g, optimizer_d = optimizers
    objective, real = model.config.objective, batch[model.output]
    if objective.accumulate_grad_batches != 1:
        raise ValueError("the plain loop steps every batch; objective.accumulate_grad_batches must be 1")
    conditions = model.condition_inputs(batch)
    loss_d = discriminator_objective(model.generator, model.discriminator, real, model.latents(real.shape[0]),
                                     conditions, objective, step=step)["loss"]
    optimizer_d.zero_grad(set_to_none=True)
    loss_d.backward()
    optimizer_d.step()
    if (step + 1) % objective.n_critic == 0:
        loss_g = generator_objective(model.generator, model.discriminator, model.latents(real.shape[0]), conditions,
                                     objective, model.aligner_term if model._aligner else None)["loss"]
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        if ema is not None:
            ema.update_parameters(model)
    return loss_d


def recipe_ema(config: dict) -> dict[str, Any] | None:
    """The ``init_args`` of the recipe's EMA callback, or None when it has none."""
    for callback in config["trainer"].get("callbacks", []):
        if _class(callback["class_path"]) is EMA:
            return callback.get("init_args", {})
    return None


def batches(loader):
    while True:
        yield from loader


def plain_round(model: ConditionalGAN, loader, steps: int, ema_args: dict[str, Any] | None) -> list[float]:
    optimizers, ends = model.configure_optimizers(), []
    ema = None
    if ema_args is not None:  # what the EMA callback builds in its setup
        decay = ema_args.get("decay", 0.999)
        ema = AveragedModel(model, multi_avg_fn=ema_update(decay, ema_args.get("warmup", False)),
                            use_buffers=ema_args.get("use_buffers", True))
    for step, batch in zip(range(steps), batches(loader)):
        plain_step(model, batch, optimizers, step, ema)
        ends.append(time.perf_counter())
    return ends


def lightning_round(model: ConditionalGAN, datamodule, steps: int, log_every: int, root: str,
                    ema_args: dict[str, Any] | None) -> list[float]:
    timer = StepTimer()
    callbacks = ([EMA(**ema_args)] if ema_args is not None else []) + [timer]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2 * steps,  # global_step counts both optimizers
                        logger=L.pytorch.loggers.TensorBoardLogger(root, name="overhead"), log_every_n_steps=log_every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule)
    return timer.ends


def per_step(ends: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/gan/digits.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each round left untimed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / args.config).read_text())
    data = config["data"]
    datamodule = _class(data["class_path"])(**data.get("init_args", {}))
    datamodule.setup("fit")
    torch.manual_seed(0)
    initial = ConditionalGAN(datamodule.data_spec, **config["model"]["init_args"])
    initial.tokenizer = datamodule.tokenizer
    loader = datamodule.train_dataloader()
    log_every = config["trainer"].get("log_every_n_steps", 50)
    ema_args = recipe_ema(config)
    times: dict[str, list[float]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(args.rounds):
            for kind in ("plain", "lightning"):
                model = copy.deepcopy(initial)
                torch.manual_seed(round_index)
                ends = (plain_round(model, loader, args.steps, ema_args) if kind == "plain"
                        else lightning_round(model, datamodule, args.steps, log_every, root, ema_args))
                times[kind] += per_step(ends, args.warmup)
                print(f"round {round_index} {kind}: {statistics.median(per_step(ends, args.warmup)) * 1e3:.1f} ms/step")
    result = {"config": args.config, "rounds": args.rounds, "timed_steps_each": len(times["plain"]),
              "batch_size": datamodule.batch_size, "ema": ema_args}
    for kind, values in times.items():
        result[kind] = {"steps_per_second_mean": len(values) / sum(values),
                        "ms_per_step_median": statistics.median(values) * 1e3}
    result["overhead_percent_mean"] = 100 * (result["plain"]["steps_per_second_mean"]
                                             / result["lightning"]["steps_per_second_mean"] - 1)
    result["overhead_percent_median"] = 100 * (result["lightning"]["ms_per_step_median"]
                                               / result["plain"]["ms_per_step_median"] - 1)
    # the version is "lightning_version": "lightning" holds the Lightning loop's timings
    result.update({"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                   "load_average": os.getloadavg(), "torch": torch.__version__, "lightning_version": L.__version__})
    out = ROOT / "benchmarks" / "results" / "gan_overhead.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

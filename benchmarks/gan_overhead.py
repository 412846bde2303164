"""Training throughput of the ConditionalGAN LightningModule against a plain PyTorch loop of the same
networks, losses, optimizers, EMA and batches, measured side by side in one process.

    python benchmarks/gan_overhead.py [--config configs/gan/digits.yaml] [--rounds 4] [--steps 40]

The two run in alternating rounds (plain, Lightning, plain, ...) so that a change in the machine's
load hits both alike; each round rebuilds its model from the same initial weights and times every
training step after ``--warmup`` steps, data loading included (the time between the ends of two
consecutive steps). Lightning runs as the recipe does (TensorBoard logging every
``log_every_n_steps``), without checkpointing, validation or sample logging, which are not part of
a step. Writes benchmarks/results/gan_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from mmgen_lightning.losses import discriminator_loss, generator_loss
from mmgen_lightning.metrics.report import _import
from mmgen_lightning.models.gan import ConditionalGAN

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def plain_round(model: ConditionalGAN, loader, steps: int) -> list[float]:
    """The same game in plain PyTorch: D on real vs detached fakes, then G through D, then the EMA."""
    generator, discriminator, loss = model.generator, model.discriminator, model.hparams.loss
    optimizer_g, optimizer_d = model.configure_optimizers()
    ends, iterator = [], iter(loader)
    for _ in range(steps):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        real, conditions = batch[model.output], model.condition_inputs(batch)
        with torch.no_grad():
            fake = generator(model.latents(real.shape[0]), conditions)
        embedding = discriminator.embed(conditions)
        real_features, fake_features = discriminator.features(torch.cat([real, fake])).chunk(2)
        loss_d = discriminator_loss(discriminator.score(real_features, embedding),
                                    discriminator.score(fake_features, embedding), loss)
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()
        loss_g = generator_loss(discriminator(generator(model.latents(real.shape[0]), conditions), conditions), loss)
        optimizer_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimizer_g.step()
        model.generator_steps += 1
        model.update_ema()
        ends.append(time.perf_counter())
    return ends


def lightning_round(model: ConditionalGAN, datamodule, steps: int, log_every: int, root: str) -> list[float]:
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2 * steps,  # global_step counts both optimizers
                        logger=L.pytorch.loggers.TensorBoardLogger(root, name="overhead"), log_every_n_steps=log_every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer])
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
    datamodule = _import(data["class_path"], "data.class_path")(**data.get("init_args", {}))
    datamodule.setup("fit")
    torch.manual_seed(0)
    initial = ConditionalGAN(datamodule.data_spec, **config["model"]["init_args"])
    initial.tokenizer = datamodule.tokenizer
    loader = datamodule.train_dataloader()
    log_every = config["trainer"].get("log_every_n_steps", 50)
    times: dict[str, list[float]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(args.rounds):
            for kind in ("plain", "lightning"):
                model = copy.deepcopy(initial)
                torch.manual_seed(round_index)
                ends = (plain_round(model, loader, args.steps) if kind == "plain"
                        else lightning_round(model, datamodule, args.steps, log_every, root))
                times[kind] += per_step(ends, args.warmup)
                print(f"round {round_index} {kind}: {statistics.median(per_step(ends, args.warmup)) * 1e3:.1f} ms/step")
    result = {"config": args.config, "rounds": args.rounds, "timed_steps_each": len(times["plain"]),
              "batch_size": datamodule.batch_size}
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

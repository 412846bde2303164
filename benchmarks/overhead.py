"""Training throughput of every family's LightningModule against a plain PyTorch loop of the same
networks, losses, optimizers, batches and data, measured side by side in one process.

    python benchmarks/overhead.py [--families vae gan captioner] [--rounds 3] [--steps 30]

For each family (its digits recipe in ``configs/<family>/digits.yaml``) the two loops run in
alternating rounds (plain, Lightning, plain, ...) so that a change in the machine's load hits both
alike; each round starts from the same initial weights and times every training step after
``--warmup`` steps, data loading included (the time between the ends of two consecutive steps).
Lightning runs as the recipe does (its logger and ``log_every_n_steps``), without checkpointing,
validation or sample logging, which are not part of a step. The plain loop is what a user would
write by hand: the family's loss, ``backward``, ``optimizer.step``, no logging.

Peak memory per step is the most memory a Lightning training step holds above what was live when
it started (activations, gradients, optimizer temporaries), summed from ``torch.profiler``'s
memory events on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

Families without a hand-written plain loop below (new ones) are measured against a loop that calls
their ``training_step`` directly, its ``self.log`` calls then doing nothing; the JSON says which.
Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from mmgen_lightning.callbacks.compile import CompileNetworks
from mmgen_lightning.objectives.captioner import captioning_objective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gan_overhead import plain_step as gan_step  # noqa: E402  (the GAN's game from its objective functions)
from recipe_run import build_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FAMILIES = ("vae", "gan", "captioner", "vqvae", "tokens")
PlainStep = Callable[[Any, dict, list, int], torch.Tensor]
#: stage 1 of the TokenTransformer when its recipe's VQVAE was not trained (budget_quality.py trains this one)
BUDGET_VQVAE = ROOT / "runs" / "budget" / "vqvae" / "checkpoints" / "last.ckpt"


# --- plain PyTorch steps: the same objective as each training_step, written by hand ----------------
def vae_step(model, batch: dict, optimizers: list, step: int) -> torch.Tensor:
    loss = model.training_loss(batch, step)["loss"]  # the objective at this step's KL weight and private gate
    optimizers[0].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[0].step()
    return loss


def captioner_step(model, batch: dict, optimizers: list, step: int) -> torch.Tensor:
    loss = captioning_objective(model, batch, model.modality, model.config.objective)["loss"]
    optimizer, scheduler = optimizers
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss


def training_step_step(model, batch: dict, optimizers: list, step: int) -> torch.Tensor:
    """Any automatically optimized family: its own ``training_step`` (``self.log`` is a no-op without a trainer)."""
    loss = model.training_step(batch, step)
    loss = loss["loss"] if isinstance(loss, dict) else loss
    optimizers[0].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[0].step()
    if len(optimizers) > 1:
        optimizers[1].step()
    return loss


PLAIN_STEPS: dict[str, PlainStep] = {"vae": vae_step, "gan": gan_step, "captioner": captioner_step}


def plain_optimizers(model) -> list:
    """``configure_optimizers`` unpacked to ``[optimizer(s)..., scheduler]`` as the plain loops use them."""
    configured = model.configure_optimizers()
    if isinstance(configured, dict):
        scheduler = configured.get("lr_scheduler")
        scheduler = scheduler["scheduler"] if isinstance(scheduler, dict) else scheduler
        return [configured["optimizer"]] + ([scheduler] if scheduler is not None else [])
    if isinstance(configured, (list, tuple)):
        return list(configured)
    return [configured]


# --- the two loops ------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Records the end of every training batch and stops the fit after ``steps`` of them."""

    def __init__(self, steps: int) -> None:
        self.steps, self.ends = steps, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) >= self.steps:
            trainer.should_stop = True


def batches(loader):
    while True:
        yield from loader


def plain_round(model, loader, steps: int, plain_step: PlainStep) -> list[float]:
    model.train()
    optimizers, ends = plain_optimizers(model), []
    for step, batch in zip(range(steps), batches(loader)):
        plain_step(model, batch, optimizers, step)
        ends.append(time.perf_counter())
    return ends


def lightning_round(model, datamodule, steps: int, log_every: int, root: str, compiled: bool = False) -> list[float]:
    """Lightning's steps; ``compiled``: with the CompileNetworks callback (inductor), its compilation inside the
    round's untimed warm-up steps."""
    timer = StepTimer(steps)
    callbacks = [CompileNetworks(), timer] if compiled else [timer]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=10_000, logger=L.pytorch.loggers.TensorBoardLogger(
                            root, name="overhead"), log_every_n_steps=log_every, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, datamodule=datamodule)
    return timer.ends


def per_step(ends: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def peak_step_memory(model, datamodule, log_every: int, root: str, steps: int = 4) -> float:
    """MiB: the largest rise of allocated memory over the last of ``steps`` Lightning training steps."""

    class ProfileLast(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == steps - 1:
                self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                self.profiler.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == steps - 1:
                self.profiler.__exit__(None, None, None)
                trainer.should_stop = True

    recorder = ProfileLast()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=10_000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[recorder], log_every_n_steps=log_every)
    trainer.fit(model, datamodule=datamodule)
    live = peak = 0
    # each op's own allocations minus frees, in time order, give the memory live during the step
    for event in sorted(recorder.profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def build(config: dict) -> tuple[Any, Any]:
    """The recipe's model and datamodule, wired as ``mmgen fit`` wires them (``recipe_run.build_recipe``)."""
    return build_recipe(config)


def load_recipe(config_path: str) -> dict:
    """The recipe's config; a TokenTransformer whose stage 1 was not trained on this clone gets the
    budget benchmark's VQVAE instead."""
    config = yaml.safe_load((ROOT / config_path).read_text())
    init_args = config["model"].setdefault("init_args", {})
    stage_one = init_args.get("vqvae_checkpoint")
    if stage_one and not (ROOT / stage_one).is_file() and BUDGET_VQVAE.is_file():
        init_args["vqvae_checkpoint"] = str(BUDGET_VQVAE)
    return config


def measure(family: str, config_path: str, rounds: int, steps: int, warmup: int, compiled: bool = False) -> dict[str, Any]:
    config = load_recipe(config_path)
    torch.manual_seed(0)
    initial, datamodule = build(config)
    if family not in PLAIN_STEPS and not initial.automatic_optimization:
        raise ValueError(f"{family}: manual optimization needs a hand-written plain loop in PLAIN_STEPS")
    plain_step = PLAIN_STEPS.get(family, training_step_step)
    loader = datamodule.train_dataloader()
    log_every = config["trainer"].get("log_every_n_steps", 50)
    kinds = ("plain", "lightning", "compiled") if compiled else ("plain", "lightning")
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    round_medians: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(rounds):
            for kind in kinds:
                model = copy.deepcopy(initial)
                torch.manual_seed(round_index)
                ends = (plain_round(model, loader, warmup + steps + 1, plain_step) if kind == "plain"
                        else lightning_round(model, datamodule, warmup + steps + 1, log_every, root,
                                             compiled=kind == "compiled"))
                durations = per_step(ends, warmup)
                times[kind] += durations
                round_medians[kind].append(statistics.median(durations))
                print(f"{family} round {round_index} {kind}: {round_medians[kind][-1] * 1e3:.1f} ms/step", flush=True)
        memory = peak_step_memory(copy.deepcopy(initial), datamodule, log_every, root)
    batch_size = datamodule.batch_size
    result: dict[str, Any] = {"family": type(initial).__name__, "config": config_path, "batch_size": batch_size,
                              "timed_steps_each": len(times["plain"]),
                              "plain_loop": "hand-written" if family in PLAIN_STEPS else "calls training_step",
                              "peak_step_memory_mib": round(memory, 2)}
    for kind, values in times.items():
        result[kind] = {"steps_per_second": len(values) / sum(values), "samples_per_second": batch_size * len(values)
                        / sum(values), "ms_per_step_median": statistics.median(values) * 1e3}
    result["overhead_percent_mean"] = 100 * (result["plain"]["steps_per_second"]
                                             / result["lightning"]["steps_per_second"] - 1)
    result["overhead_percent_median"] = 100 * (result["lightning"]["ms_per_step_median"]
                                               / result["plain"]["ms_per_step_median"] - 1)
    # each Lightning round against the plain round just before it, so a change of the machine's load between
    # rounds cancels; the median over rounds is the headline figure
    paired = [100 * (lightning / plain - 1) for plain, lightning in zip(round_medians["plain"], round_medians["lightning"])]
    result["overhead_percent_per_round"] = paired
    result["overhead_percent_paired_median"] = statistics.median(paired)
    if compiled:  # the compiled Lightning step against the eager plain loop, paired the same way
        result["compiled_speedup_vs_plain_per_round"] = [plain / step for plain, step in
                                                         zip(round_medians["plain"], round_medians["compiled"])]
        result["compiled_speedup_vs_plain_paired_median"] = statistics.median(result["compiled_speedup_vs_plain_per_round"])
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| family | batch | plain steps/s | Lightning steps/s | Lightning samples/s | overhead (median of rounds) "
             "| overhead (mean) | overhead (median step) | peak memory / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['family']} | {r['batch_size']} | {r['plain']['steps_per_second']:.2f} "
                     f"| {r['lightning']['steps_per_second']:.2f} | {r['lightning']['samples_per_second']:.0f} "
                     f"| {r['overhead_percent_paired_median']:+.1f}% "
                     f"| {r['overhead_percent_mean']:+.1f}% | {r['overhead_percent_median']:+.1f}% "
                     f"| {r['peak_step_memory_mib']:.1f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES),
                        help="families whose configs/<family>/digits.yaml exists are measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="steps of each round left untimed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compiled", action="store_true",
                        help="also a third loop: Lightning with CompileNetworks (inductor), against the plain loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results, skipped = [], []
    for family in args.families:
        config_path = f"configs/{family}/digits.yaml"
        if not (ROOT / config_path).is_file():
            skipped.append(f"{family}: no {config_path}")
            continue
        try:
            results.append(measure(family, config_path, args.rounds, args.steps, args.warmup, args.compiled))
        except Exception as error:  # a family that cannot be built here must not hide the others' rows
            skipped.append(f"{family}: {type(error).__name__}: {str(error)[:300]}")
    report = {"command": "python benchmarks/overhead.py " + " ".join(
                  f"--{k}" if v is True else f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if v is not None and v is not False),
              "results": results, "skipped": skipped,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
                         "(shared machine: other jobs ran at the same time; both loops alike)",
              "torch": torch.__version__, "lightning": L.__version__}
    out = ROOT / "benchmarks" / "results" / "overhead.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    for line in skipped:
        print(f"skipped {line}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

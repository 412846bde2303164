"""Before/after of the profiling-driven MultimodalVAE speed fixes, measured side by side.

    python benchmarks/profile_vae.py [--before 10c1f14~1] [--rounds 3] [--steps 30]

``--before`` names a git revision; the repository at that revision is unpacked into a scratch folder,
and every round trains in a fresh process of its own tree (the revision's package, or this working
tree's), so the two versions need not share a module layout; the revision gets the same model, its
options written as the flat keywords of its time (``MultimodalVAE.legacy`` read backwards). Rounds
alternate (before, after, before, ...) so that a change in the machine's load hits both alike; each
builds its model from seed 0 (the same initial weights: the networks are built alike) and runs
Lightning as the recipe does (its logger and ``log_every_n_steps``). Settings: the shared-latent digits
recipe (``configs/vae/digits_shared.yaml``: image + caption + audio, MoPoE; the digits recipe when the
fixes were made) and image + caption with MoPoE and with PoE (the peer comparison's settings). What
changed, from ``benchmarks/profile_step.py``'s profile of
the recipe: the log-mel spectrogram (STFT + magnitude, about 8% of a step) was computed twice per
step, for the audio encoder and for the likelihood's target; now once. And six ``self.log`` calls
per step, which Lightning writes only every ``log_every_n_steps``, are now made only on those steps.
Writes benchmarks/results/profile_vae.json.

Nothing of the package is imported here at the top: a round's process imports its own tree's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/vae/digits_shared.yaml"
SETTINGS = {
    "digits recipe (image+text+audio, mopoe)": {},
    "image+text, mopoe": {"modalities": ["image", "text"], "fusion": "mopoe"},
    "image+text, poe": {"modalities": ["image", "text"], "fusion": "poe"},
}


def timed_round(spec: dict) -> list[float]:
    """The end time of every training step of one Lightning round of ``spec["config"]``, in this process's
    package (the tree on ``PYTHONPATH``)."""
    config, steps = spec["config"], spec["steps"]

    def named(section: str):
        module, _, name = config[section]["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)

    torch.manual_seed(0)
    datamodule = named("data")(**config["data"].get("init_args", {}))
    datamodule.setup("fit")
    model = named("model")(datamodule.data_spec, **config["model"].get("init_args", {}))
    model.tokenizer = datamodule.tokenizer
    torch.manual_seed(spec["seed"])
    ends: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            ends.append(time.perf_counter())
            if len(ends) >= steps:
                trainer.should_stop = True

    with tempfile.TemporaryDirectory() as logs:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=10_000, log_every_n_steps=spec["log_every"],
                            logger=L.pytorch.loggers.TensorBoardLogger(logs, name="profile"),
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, callbacks=[StepTimer()])
        trainer.fit(model, datamodule=datamodule)
    return ends


def run_round(tree: Path, config: dict, steps: int, seed: int, log_every: int) -> list[float]:
    """:func:`timed_round` in a fresh process of ``tree``'s package."""
    spec = json.dumps({"config": config, "steps": steps, "seed": seed, "log_every": log_every})
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--round", spec], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"a round in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines()[::-1] if line.startswith("ROUND "))[6:])


def unpack(revision: str, scratch: Path) -> Path:
    """The repository at ``revision``, unpacked into ``scratch/before``."""
    folder = scratch / "before"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def setting_config(change: dict) -> dict:
    """The recipe with the setting's modalities and fusion."""
    config = yaml.safe_load((ROOT / RECIPE).read_text())
    if "modalities" in change:
        config["data"]["init_args"]["modalities"] = change["modalities"]
    if "fusion" in change:
        config["model"]["init_args"]["fusion"] = change["fusion"]
    return config


def flat_options(config: dict) -> dict:
    """``config`` with its model's option groups written as the flat keywords of the code before them."""
    from mmgen_lightning.models.vae import MultimodalVAE

    layout = MultimodalVAE.legacy
    renamed = {new: old for old, new in layout.renamed.items()}
    flat = {}
    for key, value in config["model"].get("init_args", {}).items():
        if key in layout.groups:
            flat.update({renamed.get(f"{key}.{field}", field): item for field, item in value.items()})
        else:
            flat[key] = value
    return {**config, "model": {**config["model"], "init_args": flat}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="10c1f14~1", help="git revision of the code before the fixes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round", default=None, help=argparse.SUPPRESS)  # a round's own process (run_round)
    args = parser.parse_args()
    if args.round is not None:
        print("ROUND " + json.dumps(timed_round(json.loads(args.round))))
        return
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"before": unpack(args.before, Path(scratch)), "after": ROOT}
        for name, change in SETTINGS.items():
            after = setting_config(change)
            configs, log_every = {"before": flat_options(after), "after": after}, after["trainer"]["log_every_n_steps"]
            times = {"before": [], "after": []}
            for round_index in range(args.rounds):
                for kind, tree in trees.items():
                    ends = run_round(tree, configs[kind], args.warmup + args.steps + 1, round_index, log_every)
                    times[kind] += [b - a for a, b in zip(ends[args.warmup:], ends[args.warmup + 1:])]
            row = {kind: {"ms_per_step_median": statistics.median(v) * 1e3, "steps_per_second": len(v) / sum(v)}
                   for kind, v in times.items()}
            row["speedup_mean"] = row["after"]["steps_per_second"] / row["before"]["steps_per_second"]
            results[name] = row
            print(f"{name}: before {row['before']['ms_per_step_median']:.1f} ms/step, after "
                  f"{row['after']['ms_per_step_median']:.1f} ms/step, speed-up {row['speedup_mean']:.2f}x", flush=True)
    base = yaml.safe_load((ROOT / RECIPE).read_text())
    report = {"command": f"python benchmarks/profile_vae.py --before {args.before} --rounds {args.rounds} "
                         f"--steps {args.steps} --warmup {args.warmup}",
              "settings": results, "batch_size": base["data"]["init_args"]["batch_size"],
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (shared)",
              "torch": torch.__version__, "lightning": L.__version__}
    out = ROOT / "benchmarks" / "results" / "profile_vae.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| setting | before ms/step | after ms/step | speed-up (mean steps/s) |\n|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['before']['ms_per_step_median']:.1f} | {row['after']['ms_per_step_median']:.1f} "
              f"| {row['speedup_mean']:.2f}x |")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

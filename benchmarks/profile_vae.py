"""Before/after of the profiling-driven MultimodalVAE speed fixes, measured side by side.

    python benchmarks/profile_vae.py [--before 10c1f14~1] [--rounds 3] [--steps 30]

``--before`` names a git revision; its ``mmgen_lightning/models/vae.py`` is loaded as a module of its
own next to the current one, so both train in one process on the same batches, in alternating
Lightning rounds (recipe logger and ``log_every_n_steps``), each from the same initial weights.
Settings: the digits recipe (image + caption + audio, MoPoE) and image + caption with MoPoE and with
PoE (the peer comparison's settings). What changed, from ``benchmarks/profile_step.py``'s profile of
the recipe: the log-mel spectrogram (STFT + magnitude, about 8% of a step) was computed twice per
step, for the audio encoder and for the likelihood's target; now once. And six ``self.log`` calls
per step, which Lightning writes only every ``log_every_n_steps``, are now made only on those steps.
Writes benchmarks/results/profile_vae.json.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import build, lightning_round, per_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "digits recipe (image+text+audio, mopoe)": {},
    "image+text, mopoe": {"modalities": ["image", "text"], "fusion": "mopoe"},
    "image+text, poe": {"modalities": ["image", "text"], "fusion": "poe"},
}


def load_revision(revision: str, scratch: Path):
    """``mmgen_lightning/models/vae.py`` as of ``revision``, imported as its own module."""
    source = subprocess.run(["git", "show", f"{revision}:mmgen_lightning/models/vae.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = scratch / "vae_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("vae_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="10c1f14~1", help="git revision of the code before the fixes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    base = yaml.safe_load((ROOT / "configs/vae/digits.yaml").read_text())
    log_every = base["trainer"].get("log_every_n_steps", 50)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        before_module = load_revision(args.before, Path(scratch))
        for name, change in SETTINGS.items():
            config = copy.deepcopy(base)
            if "modalities" in change:
                config["data"]["init_args"]["modalities"] = change["modalities"]
            config["model"]["init_args"]["fusion"] = change.get("fusion", config["model"]["init_args"]["fusion"])
            torch.manual_seed(0)
            after, datamodule = build(config)
            before = before_module.MultimodalVAE(datamodule.data_spec, **config["model"]["init_args"])
            before.load_state_dict(after.state_dict())
            before.tokenizer = datamodule.tokenizer
            times = {"before": [], "after": []}
            for round_index in range(args.rounds):
                for kind, initial in (("before", before), ("after", after)):
                    torch.manual_seed(round_index)
                    ends = lightning_round(copy.deepcopy(initial), datamodule, args.warmup + args.steps + 1,
                                           log_every, scratch)
                    times[kind] += per_step(ends, args.warmup)
            row = {kind: {"ms_per_step_median": statistics.median(v) * 1e3, "steps_per_second": len(v) / sum(v)}
                   for kind, v in times.items()}
            row["speedup_mean"] = row["after"]["steps_per_second"] / row["before"]["steps_per_second"]
            results[name] = row
            print(f"{name}: before {row['before']['ms_per_step_median']:.1f} ms/step, after "
                  f"{row['after']['ms_per_step_median']:.1f} ms/step, speed-up {row['speedup_mean']:.2f}x", flush=True)
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

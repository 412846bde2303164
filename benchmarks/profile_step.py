"""Where a family's training step spends its time: ``torch.profiler`` over a few steps of the plain
loop of benchmarks/overhead.py (the same objective as its ``training_step``), plus the step's wall time.

    python benchmarks/profile_step.py [--family vae] [--config configs/vae/digits.yaml] [--steps 20]
        [--tag before|after]

Prints the ops with the most self CPU time and the share of the step each takes; writes
benchmarks/results/profile_step_<family>[_<tag>].json (ms per step, top ops, and the share spent in
autograd's backward ops vs the forward).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import PLAIN_STEPS, batches, build, plain_optimizers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="vae", choices=sorted(PLAIN_STEPS))
    parser.add_argument("--config", default=None, help="default: configs/<family>/digits.yaml")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps (after 5 warm-up steps)")
    parser.add_argument("--timed-steps", type=int, default=40, help="steps timed without the profiler")
    parser.add_argument("--tag", default="", help="suffix of the results file, e.g. before/after")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                        help="config overrides, e.g. data.init_args.modalities=[image,text] model.init_args.fusion=poe")
    args = parser.parse_args()
    config_path = args.config or f"configs/{args.family}/digits.yaml"
    config = yaml.safe_load((ROOT / config_path).read_text())
    for override in args.set:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    torch.manual_seed(0)
    model, datamodule = build(config)
    model.train()
    optimizers, step_fn = plain_optimizers(model), PLAIN_STEPS[args.family]
    stream = batches(datamodule.train_dataloader())
    for step in range(5):
        step_fn(model, next(stream), optimizers, step)
    durations = []
    for step in range(args.timed_steps):
        started = time.perf_counter()
        step_fn(model, next(stream), optimizers, step)
        durations.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for step in range(args.steps):
            step_fn(model, next(stream), optimizers, step)
    averages = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.top]
    rows = [{"op": e.key, "calls_per_step": e.count / args.steps, "self_ms_per_step": e.self_cpu_time_total / 1e3
             / args.steps, "share": e.self_cpu_time_total / total} for e in top]
    backward = sum(e.self_cpu_time_total for e in averages if "Backward" in e.key or "backward" in e.key)
    optimizer = sum(e.self_cpu_time_total for e in averages if "Optimizer" in e.key or "_foreach" in e.key
                    or "adam" in e.key.lower())
    result = {"family": type(model).__name__, "config": config_path, "overrides": args.set,
              "batch_size": datamodule.batch_size,
              "ms_per_step_median": statistics.median(durations) * 1e3, "timed_steps": args.timed_steps,
              "profiled_steps": args.steps, "backward_share": backward / total, "optimizer_share": optimizer / total,
              "top_ops": rows,
              "command": f"python benchmarks/profile_step.py --family {args.family} --config {config_path} "
                         f"--steps {args.steps} --timed-steps {args.timed_steps}" + (f" --tag {args.tag}" if args.tag else "")
                         + (f" --set {' '.join(args.set)}" if args.set else ""),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (shared)",
              "torch": torch.__version__}
    name = f"profile_step_{args.family}" + (f"_{args.tag}" if args.tag else "")
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['family']} ({config_path}): {result['ms_per_step_median']:.1f} ms/step median; "
          f"backward {100 * result['backward_share']:.0f}%, optimizer {100 * result['optimizer_share']:.0f}%")
    print("| op | calls/step | self ms/step | share |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['op']} | {row['calls_per_step']:.0f} | {row['self_ms_per_step']:.2f} | {100 * row['share']:.1f}% |")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

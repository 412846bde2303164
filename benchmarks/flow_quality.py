"""Train a FlowMatching recipe fresh within its wall-clock budget, then judge its samples on held-out
captions with the project's judges (trained only on real training data, ``metrics/judges.py``).

    python benchmarks/flow_quality.py --config configs/flow/shapes.yaml [--skip-fit] [--repeats 1]

Reported:

* the recipe's own sampling settings (steps, solver, guidance) on every test caption, ``--repeats``
  times: the judge's accuracy on every attribute at once and on each (a shape's shape, color, size,
  position; a digit), and per class of the first attribute the diversity ratio: the mean pairwise L2
  distance between generated samples of the class divided by the same for the real training images
  of the class, both at ``--diversity-size`` pixels (8: the digits' own resolution);
* a table over solver steps (1, 2, 4, 8, 16, 32) and guidance scales (within the recipe's guidance
  interval of ``t``) on the first ``--sweep`` test captions, with sampling images/s (this machine,
  1 thread) per setting.

Writes benchmarks/results/flow_<config name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from recipe_run import checkpoint_dir, fit_from_scratch
from torch.utils.data import DataLoader

from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
STEPS = (1, 2, 4, 8, 16, 32)


def whole_split(datamodule, split: str) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(datamodule.dataset(split), batch_size=len(datamodule.dataset(split)))))


@torch.no_grad()
def generate_all(model, conditions: dict[str, torch.Tensor], batch_size: int = 250, seed: int = 0,
                 **sampling) -> tuple[torch.Tensor, float]:
    """Samples for every row of ``conditions`` and the seconds they took."""
    count = next(iter(conditions.values())).shape[0]
    outputs, started = [], time.perf_counter()
    for index, start in enumerate(range(0, count, batch_size)):
        chunk = {k: v[start:start + batch_size] for k, v in conditions.items()}
        size = next(iter(chunk.values())).shape[0]
        outputs.append(model.generate(chunk, num_samples=size, seed=seed + index, **sampling)[model.output])
    return torch.cat(outputs), time.perf_counter() - started


def mean_pairwise_distance(x: torch.Tensor) -> float:
    return torch.pdist(x.flatten(1).double()).mean().item()


def judged(judge, samples: torch.Tensor, truth: torch.Tensor) -> dict:
    predicted = judge.predict(samples)
    return {"accuracy": (predicted == truth).all(1).float().mean().item(),
            "accuracy_per_attribute": {name: (predicted[:, i] == truth[:, i]).float().mean().item()
                                       for i, name in enumerate(judge.attributes)}}


def diversity(judge, datamodule, samples: torch.Tensor, truth: torch.Tensor, train: dict, size: int) -> list[dict]:
    """Per class of the first judged attribute: pairwise distances of generated and real images at ``size`` px."""
    shrink = lambda x: F.adaptive_avg_pool2d(x.float(), size)  # noqa: E731
    first = judge.attributes[0]
    classes = datamodule.data_spec["attribute_sizes"][judge.columns[0]]
    train_classes = judge.targets(train["attributes"])[:, 0]
    rows = []
    for value in range(classes):
        chosen = truth[:, 0] == value
        if chosen.sum() < 2:
            continue
        row = {first: value, "samples": int(chosen.sum()),
               "pairwise_distance_generated": mean_pairwise_distance(shrink(samples[chosen])),
               "pairwise_distance_real": mean_pairwise_distance(shrink(train["image"][train_classes == value]))}
        row["diversity_ratio"] = row["pairwise_distance_generated"] / row["pairwise_distance_real"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/flow/shapes.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--repeats", type=int, default=1, help="samples per test caption")
    parser.add_argument("--sweep", type=int, default=200, help="test captions in the steps x guidance table (0: no table)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0], help="guidance scales swept")
    parser.add_argument("--samplers", nargs="+", default=None,
                        help="samplers swept in the table (default: the recipe's; shortcut for a shortcut model)")
    parser.add_argument("--diversity-size", type=int, default=8, help="side in pixels the diversity is measured at")
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/flow_<name>.json)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    name = Path(args.config).stem
    train_seconds = None
    command = "python benchmarks/flow_quality.py " + " ".join(sys.argv[1:])
    if not args.skip_fit:
        train_seconds = fit_from_scratch(args.config, config, args.fit_args)
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    judge = get_judge(datamodule, "image")
    test, train = whole_split(datamodule, "test"), whole_split(datamodule, "train")
    keys = [model.condition] + (["text_mask"] if model.condition == "text" else [])
    conditions = {k: test[k].repeat_interleave(args.repeats, 0) for k in keys}
    truth = judge.targets(test["attributes"]).repeat_interleave(args.repeats, 0)
    hp = model.config.sampling
    interval = [hp.guidance_start, hp.guidance_stop]
    recipe = {"sampler": hp.sampler, "steps": hp.steps, "guidance_scale": hp.guidance_scale,
              "guidance_interval": interval}

    samples, seconds = generate_all(model, conditions)
    per_class = diversity(judge, datamodule, samples, truth, train, args.diversity_size)
    main_result = {"sampling": recipe, "samples": int(samples.shape[0]), **judged(judge, samples, truth),
                   "min_diversity_ratio": min(r["diversity_ratio"] for r in per_class),
                   "mean_diversity_ratio": sum(r["diversity_ratio"] for r in per_class) / len(per_class),
                   "images_per_second": samples.shape[0] / seconds, "per_class": per_class}
    real = judged(judge, test["image"], judge.targets(test["attributes"]))
    print(json.dumps({k: v for k, v in main_result.items() if k != "per_class"}), flush=True)

    sweep_conditions = {k: v[: args.sweep] for k, v in conditions.items()}
    sweep_truth = truth[: args.sweep]
    table = []
    sweeps = [(sampler, guidance, steps) for sampler in args.samplers or [hp.sampler] for guidance in args.guidance
              for steps in STEPS] if args.sweep else []
    for sampler, guidance, steps in sweeps:
        sweep_samples, sweep_seconds = generate_all(model, sweep_conditions, steps=steps, guidance_scale=guidance,
                                                    sampler=sampler)
        row = {"steps": steps, "guidance_scale": guidance, "guidance_interval": interval, "sampler": sampler,
               **judged(judge, sweep_samples, sweep_truth),
               "min_diversity_ratio": min(r["diversity_ratio"] for r in diversity(
                   judge, datamodule, sweep_samples, sweep_truth, train, args.diversity_size)),
               "images_per_second": sweep_samples.shape[0] / sweep_seconds}
        table.append(row)
        print(f"{sampler} guidance {guidance:4.1f} steps {steps:2d}: all {row['accuracy']:.3f} " +
              " ".join(f"{k} {v:.3f}" for k, v in row["accuracy_per_attribute"].items()) +
              f" div {row['min_diversity_ratio']:.2f} {row['images_per_second']:.1f} img/s", flush=True)

    report = {"command": command, "config": args.config, "train_seconds_including_startup": train_seconds,
              "max_time": config["trainer"].get("max_time"), "fit_args": args.fit_args,
              "optimizer_steps": stored.get("global_step"), "epochs": stored.get("epoch"),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
              "direction": f"{model.condition}->image", "judged_attributes": list(judge.attributes),
              "judge_on_real_test_images": real, "recipe_sampling": main_result, "steps_guidance_table": table}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"flow_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

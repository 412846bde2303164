"""Train a MultimodalVAE recipe within its wall-clock budget, then score it with `mmgen evaluate`, and the
per-class diversity and precision/recall of its conditional samples.

    python benchmarks/vae_quality.py [--config configs/vae/digits.yaml] [--seed S] [--set objective.cross_samples=4 ...]
                                     [--tag NAME] [--skip-fit] [--private-scales 1.0 1.5]
    python benchmarks/vae_quality.py --summarize digits mopoe mopoe_private   # the runs side by side
    python benchmarks/vae_quality.py --seed S --tag T --sweep truncation=0.5,private_scale=1.25 ...
        # only the diversity table of run T's last.ckpt at other sampling knobs -> vae_<config>_<T>_seed<S>_sweep.json

With no ``--seed``/``--set``/``--tag`` the recipe runs as written and the result is
benchmarks/results/vae_<config name>.json (+ .md); otherwise the run is
``vae_<config name>_<tag>_seed<S>.json`` and trains from a copy of the recipe that differs only in the
seed, the given ``model.init_args`` (``fusion=poe``, or a group's field: ``network.private_dim={image: 8}``) and
its output folders (same ``max_time``). Each report holds the
training time, steps and the coherence of every direction, each read by a judge trained only on the
real training split.

Diversity (text->image and audio->image): ``--per-class`` samples of each class, each conditioned on a
test item of that class (cycled); per class, the mean pairwise L2 distance between its samples divided
by the same for the real training images of that class (both area-downsampled to the data's own
resolution), reported per class, as the mean and as the minimum over classes. A class is a digit
(at the scans' 8x8) on digits; on Shapes, one of the first 32 combinations of shape, colour, size and
position in the test split (at the images' size), and a sample is coherent only when the judge reads
all four. The same samples give the judge's precision/recall/density/coverage (k = 5) in its feature
space against as many real training images of the same classes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from recipe_run import DATA_RESOLUTION, pairwise_spread
from torch.utils.data import DataLoader

from mmgen_lightning.datamodules.shapes import ATTRIBUTE_SIZES
from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.quality import PrecisionRecall
from mmgen_lightning.metrics.report import evaluate, load_datamodule, markdown
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
DIVERSITY_DIRECTIONS = ("text->image", "audio->image")


def split_tensors(datamodule, split: str) -> dict[str, torch.Tensor]:
    batches = list(DataLoader(datamodule.dataset(split), batch_size=512))
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def image_classes(datamodule, attributes: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Each item's class for the diversity table, how many leading attributes define it, and the resolution
    its spread is measured at: the digit at the digits' 8x8; on Shapes the four attributes one image shows
    (shape, colour, size, position: motion needs frames), one integer per combination, at the images' own
    size, where the data's within-class jitter (a few pixels of position and radius, the tint) shows."""
    if datamodule.data_spec["dataset"] == "digits":
        return attributes[:, 0], 1, DATA_RESOLUTION
    code = torch.zeros(len(attributes), dtype=torch.long)
    for column, size in enumerate(ATTRIBUTE_SIZES[:4]):
        code = code * size + attributes[:, column]
    return code, 4, datamodule.data_spec["image_size"]


@torch.no_grad()
def class_diversity(model, datamodule, per_class: int, seed: int, max_classes: int = 32, **sampling) -> dict:
    """Per-class diversity, coherence and precision/recall of ``DIVERSITY_DIRECTIONS`` (see the module doc);
    the classes: every digit, or the first ``max_classes`` Shapes combinations the test split holds;
    ``sampling``: knobs for ``generate`` (the model's defaults otherwise)."""
    judge = get_judge(datamodule, "image", seed=0)
    test, train = split_tensors(datamodule, "test"), split_tensors(datamodule, "train")
    (test_classes, width, resolution), (train_classes, _, _) = (image_classes(datamodule, split["attributes"])
                                                                for split in (test, train))
    classes = [c for c in dict.fromkeys(test_classes.tolist()) if (train_classes == c).sum() >= 2][:max_classes]
    if width == 1:
        classes.sort()
    generator = torch.Generator().manual_seed(seed)
    pool = torch.isin(train_classes, torch.tensor(classes)).nonzero().squeeze(1)  # real images of the same classes
    real_rows = pool[torch.randperm(len(pool), generator=generator)[:per_class * len(classes)]]
    real_features, _ = judge.features_and_logits(train["image"][real_rows])
    real_spread = {c: pairwise_spread(train["image"][train_classes == c], resolution) for c in classes}
    result = {}
    for index, direction in enumerate(DIVERSITY_DIRECTIONS):
        source = direction.split("->")[0]
        if source not in model.condition_modalities or source not in test:
            continue
        keys = [source] + (["text_mask"] if source == "text" else [])
        ratios, correct, samples = {}, 0, []
        for number, label in enumerate(classes):
            rows = (test_classes == label).nonzero().squeeze(1)
            rows = rows[torch.arange(per_class) % len(rows)]
            torch.manual_seed(seed * 1000 + index * 100 + number)
            images = model.generate({k: test[k][rows] for k in keys}, per_class, to="image", **sampling)["image"]
            ratios[str(label)] = pairwise_spread(images, resolution) / real_spread[label]
            wanted = test["attributes"][rows[0], :width]
            correct += (judge.predict(images)[:, :width].cpu() == wanted).all(1).sum().item()
            samples.append(images)
        metric = PrecisionRecall(nearest_k=5)
        metric.update(real_features, real=True)
        metric.update(judge.features_and_logits(torch.cat(samples))[0], real=False)
        result[direction] = {"samples": per_class * len(classes), "coherence": correct / (per_class * len(classes)),
                             "diversity_vs_real": sum(ratios.values()) / len(ratios),
                             "diversity_min": min(ratios.values()), "diversity_per_class": ratios,
                             **{k: v.item() for k, v in metric.compute().items()}}
    return result


def diversity_markdown(diversity: dict) -> str:
    lines = ["| direction | samples | coherence | diversity / real | precision | recall | density | coverage |",
             "|---|---|---|---|---|---|---|---|"]
    for direction, row in diversity.items():
        lines.append(f"| {direction} | {row['samples']} | {row['coherence']:.3f} | {row['diversity_vs_real']:.3f} | "
                     f"{row['precision']:.3f} | {row['recall']:.3f} | {row['density']:.3f} | {row['coverage']:.3f} |")
    return "\n".join(lines) + "\n"


def run_config(config_path: str, seed: int | None, overrides: list[str], tag: str | None,
               max_time: str | None = None, max_epochs: int | None = None) -> tuple[Path, str, Path]:
    """The config to train (a copy when anything is overridden), its result name and checkpoint folder."""
    config = yaml.safe_load((ROOT / config_path).read_text())
    name = Path(config_path).stem
    if seed is None and not overrides and tag is None and max_time is None and max_epochs is None:
        return ROOT / config_path, f"vae_{name}", ROOT / config["trainer"]["callbacks"][0]["init_args"]["dirpath"]
    seed = config.get("seed_everything", 0) if seed is None else seed
    run = f"{name}_{tag or 'run'}_seed{seed}"
    folder = ROOT / "runs" / "vae_quality" / run
    config["seed_everything"] = seed
    for override in overrides:
        key, _, value = override.partition("=")
        if not key or not value:
            raise SystemExit(f"--set: give KEY=VALUE (a model.init_args key or SECTION.FIELD), got {override!r}")
        section, _, field = key.rpartition(".")
        target = config["model"].setdefault("init_args", {})
        if section:  # a field of an option group: objective.cross_samples=8
            target = target.setdefault(section, {})
        target[field] = yaml.safe_load(value)
    trainer = config["trainer"]
    if max_time is not None:
        trainer["max_time"] = max_time
    if max_epochs is not None:
        trainer["max_epochs"] = max_epochs
    trainer["default_root_dir"] = str(folder)
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"]["init_args"].update(save_dir=str(folder), name="logs")
    trainer["callbacks"][0]["init_args"]["dirpath"] = str(folder / "checkpoints")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "config.yaml", f"vae_{run}", folder / "checkpoints"


def summarize(name: str, tags: list[str]) -> tuple[dict, str]:
    """Every seed of each tagged run of ``name`` (``vae_<name>_<tag>_seed<S>.json``), side by side, with
    the mean over seeds: the diversity table's columns on digits, text->image coherence per attribute else."""
    results = ROOT / "benchmarks" / "results"
    rows, lines = [], []
    for tag in tags:
        for path in sorted(results.glob(f"vae_{name}_{tag}_seed*.json")):
            if not path.stem.rsplit("seed", 1)[1].isdigit():  # a --sweep of the run
                continue
            report = json.loads(path.read_text())
            row = {"tag": tag, "seed": int(path.stem.rsplit("seed", 1)[1]), "steps": report["steps"],
                   "fusion": report["fusion"], "private_dim": report["private_dim"],
                   "private_sample_scale": report.get("private_sample_scale"), "file": path.name}
            for direction, scores in report.get("diversity", {}).items():
                row.update({f"{direction} {k}": v for k, v in scores.items() if k not in ("diversity_per_digit", "diversity_per_class")})
            for coherence in report["coherence"]:
                if coherence["direction"] == "text->image":
                    row.update({f"text->image test coherence {a}": coherence[f"accuracy_{a}"]
                                for a in coherence["attributes"]})
            rows.append(row)
    if not rows:
        raise SystemExit(f"--summarize: no benchmarks/results/vae_{name}_<tag>_seed*.json for tags {tags}")
    columns = [k for k in rows[0] if isinstance(rows[0][k], float)]
    means = []
    for tag in tags:
        mine = [r for r in rows if r["tag"] == tag]
        if mine:
            means.append({"tag": tag, "seeds": [r["seed"] for r in mine],
                          "steps": [r["steps"] for r in mine],
                          **{c: sum(r[c] for r in mine) / len(mine) for c in columns if all(c in r for r in mine)}})
    lines.append("| run | seed | steps | " + " | ".join(columns) + " |")
    lines.append("|---" * (len(columns) + 3) + "|")
    for row in rows:
        lines.append(f"| {row['tag']} | {row['seed']} | {row['steps']} | "
                     + " | ".join(f"{row.get(c, float('nan')):.3f}" for c in columns) + " |")
    for mean in means:
        lines.append(f"| **{mean['tag']} mean** | {len(mean['seeds'])} seeds | {sum(mean['steps']) / len(mean['steps']):.0f} | "
                     + " | ".join(f"{mean.get(c, float('nan')):.3f}" for c in columns) + " |")
    return {"runs": rows, "means": means}, "\n".join(lines) + "\n"


def newest_last(ckpt_dir: Path) -> Path:
    """The run's ``last.ckpt``: ``mmgen fit`` into a folder that holds an earlier run keeps that run's
    checkpoints and writes ``last-vN.ckpt``, so the newest ``last*.ckpt`` is this run's."""
    found = sorted(ckpt_dir.glob("last*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise SystemExit(f"no last.ckpt in {ckpt_dir}: train the run first (without --skip-fit)")
    return found[-1]


def sweep(ckpt: Path, name: str, settings: list[str], per_class: int) -> None:
    """The diversity table of ``ckpt`` at each setting (``truncation=0.5,private_scale=1.25``)."""
    model, datamodule = load_generator(ckpt), load_datamodule(ckpt)
    command = shlex.join(["python", "benchmarks/vae_quality.py", *sys.argv[1:]])
    report = {"command": command, "checkpoint": str(ckpt),
              "steps": torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"],
              "defaults": {"private_sample_scale": model.config.sampling.private_scale,
                           "truncation": model.config.sampling.truncation},
              "settings": {}}
    out = ROOT / "benchmarks" / "results" / f"{name}_sweep.json"
    if out.exists():  # an earlier sweep of the same checkpoint keeps its settings; one of another is replaced
        earlier = json.loads(out.read_text())
        if earlier.get("checkpoint") == report["checkpoint"] and earlier.get("steps") == report["steps"]:
            report["settings"] = earlier["settings"]
            report["command"] = "; ".join(dict.fromkeys(earlier["command"].split("; ") + [command]))
    for setting in settings:
        knobs = {} if setting == "defaults" else {  # "defaults": the checkpoint's own
            key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in setting.split(","))}
        report["settings"][setting] = class_diversity(model, datamodule, per_class, seed=0, **knobs)
        print(f"\n{setting} ({report['steps']} steps):\n\n" + diversity_markdown(report["settings"][setting]))
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("".join(f"\n{setting} ({report['steps']} steps):\n\n" + diversity_markdown(table)
                                              for setting, table in report["settings"].items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/vae/digits.yaml")
    parser.add_argument("--seed", type=int, default=None, help="seed_everything of the run (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model.init_args entry (YAML value), e.g. fusion=poe, or a field of an "
                             "option group, e.g. objective.private_dropout=0.5")
    parser.add_argument("--tag", default=None, help="names the run's result file")
    parser.add_argument("--max-time", default=None, help="a shorter budget than the recipe's, for prototypes "
                                                        "(DD:HH:MM:SS)")
    parser.add_argument("--max-epochs", type=int, default=None, help="another epoch cap than the recipe's (its "
                                                                    "max_time still ends the run)")
    parser.add_argument("--per-class", type=int, default=50, help="samples per digit of the diversity table")
    parser.add_argument("--private-scales", type=float, nargs="*", default=[],
                        help="also tabulate diversity at these private_scale knob values (models with private "
                             "latents; the headline table uses the model's own default)")
    parser.add_argument("--sweep", nargs="+", default=None, metavar="KNOB=VALUE[,KNOB=VALUE]",
                        help="no training and no main report: the diversity table of the run's last.ckpt at each "
                             "setting of generate's knobs ('defaults': the checkpoint's own), written to "
                             "<run>_sweep.json")
    parser.add_argument("--skip-fit", action="store_true", help="evaluate the existing last.ckpt")
    parser.add_argument("--summarize", nargs="+", metavar=("NAME", "TAG"), default=None,
                        help="only tabulate the finished runs: NAME (config stem) then the tags to compare")
    args = parser.parse_args()
    if args.summarize:
        if len(args.summarize) < 2:
            raise SystemExit("--summarize: give the config name, then at least one tag")
        summary, table = summarize(args.summarize[0], args.summarize[1:])
        summary["command"] = shlex.join(["python", "benchmarks/vae_quality.py", *sys.argv[1:]])
        out = ROOT / "benchmarks" / "results" / f"vae_{args.summarize[0]}_comparison.json"
        out.write_text(json.dumps(summary, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)
        print(table)
        return
    config, name, ckpt_dir = run_config(args.config, args.seed, args.set, args.tag, args.max_time, args.max_epochs)
    if args.sweep:
        sweep(newest_last(ckpt_dir), name, args.sweep, args.per_class)
        return
    train_seconds = None
    if not args.skip_fit:
        started = time.time()
        subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", str(config),
                        "--trainer.enable_progress_bar", "false"], check=True, cwd=ROOT)
        train_seconds = round(time.time() - started, 1)
    ckpt = newest_last(ckpt_dir)
    steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    report = evaluate(ckpt)
    text = markdown(report)
    model, datamodule = load_generator(ckpt), load_datamodule(ckpt)
    if datamodule.data_spec["dataset"] in ("digits", "shapes"):
        report["diversity"] = class_diversity(model, datamodule, args.per_class, seed=0)
        text += "\nPer-class diversity (mean pairwise L2 / the real images' of the class), with coherence and " \
                "precision/recall of the same samples:\n\n" + diversity_markdown(report["diversity"])
        if args.private_scales and any(model.autoencoder.private_dims.values()):
            report["private_sample_scale"] = model.config.sampling.private_scale
            report["diversity_by_private_scale"] = {
                str(scale): class_diversity(model, datamodule, args.per_class, seed=0, private_scale=scale)
                for scale in args.private_scales}
            for scale, table in report["diversity_by_private_scale"].items():
                text += f"\nSame checkpoint, private_scale={scale} (the recipe's default is " \
                        f"{report['private_sample_scale']}):\n\n" + diversity_markdown(table)
    command = shlex.join(["python", "benchmarks/vae_quality.py", *sys.argv[1:]])
    report.update({"command": command, "config": args.config, "fusion": model.fusion,
                   "private_dim": model.config.network.private_dim,
                   "private_warmup_steps": model.config.objective.private_warmup_steps,
                   "sample_truncation": model.config.sampling.truncation,
                   "train_seconds_including_startup": train_seconds,
                   "steps": steps, "machine": f"{platform.processor() or platform.machine()}, "
                                              f"{torch.get_num_threads()} threads", "torch": torch.__version__})
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"trained {steps} steps in {train_seconds} s; wrote {out}")


if __name__ == "__main__":
    main()

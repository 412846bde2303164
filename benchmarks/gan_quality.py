"""Train a ConditionalGAN recipe within its wall-clock budget, then measure its samples with judges
trained separately on the real training split (``mmgen_lightning.metrics.judges``).

    python benchmarks/gan_quality.py --config configs/gan/digits.yaml [--skip-fit] [--repeats 5]

Image recipes (label/text/audio -> image): every condition of the test split is given ``--repeats``
times; reported are the judge's accuracy on the requested attributes (the digit; a shape's shape,
color, size and position; all must be right), and per class of the first attribute the mean
pairwise pixel distance between generated samples next to that of the real training images of
the class (their ratio is the diversity score; 1 = as varied as the data).

Video recipes (text -> video): every test caption ("the digit 7 going up") is given ``--repeats``
times; in each frame the 16x16 window with the most ink is cropped and read by the image judge
(digit per frame), the ink centroid's path from the first to the last frame gives the motion
direction, and the video judge reads digit and direction per clip. The same measurements on the
real test videos are reported beside them as the ceiling.

Writes benchmarks/results/gan_<config name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def whole_split(datamodule, split: str) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(datamodule.dataset(split), batch_size=len(datamodule.dataset(split)))))


@torch.no_grad()
def generate_all(model, conditions: dict[str, torch.Tensor], batch_size: int = 256, seed: int = 0) -> torch.Tensor:
    count = next(iter(conditions.values())).shape[0]
    outputs = []
    for index, start in enumerate(range(0, count, batch_size)):
        chunk = {k: v[start:start + batch_size] for k, v in conditions.items()}
        size = next(iter(chunk.values())).shape[0]
        outputs.append(model.generate(chunk, num_samples=size, seed=seed + index)[model.output])
    return torch.cat(outputs)


def mean_pairwise_distance(x: torch.Tensor) -> float:
    return torch.pdist(x.flatten(1).double()).mean().item()


def image_metrics(model, datamodule, repeats: int) -> dict:
    judge = get_judge(datamodule, "image")
    test, train = whole_split(datamodule, "test"), whole_split(datamodule, "train")
    keys = [model.condition] + (["text_mask"] if model.condition == "text" else [])
    conditions = {k: test[k].repeat_interleave(repeats, 0) for k in keys}
    truth = judge.targets(test["attributes"]).repeat_interleave(repeats, 0)  # B,K judged attributes
    started = time.time()
    samples = generate_all(model, conditions)
    seconds = time.time() - started
    predicted = judge.predict(samples)
    real_truth = judge.targets(test["attributes"])
    real_accuracy = (judge.predict(test["image"]) == real_truth).all(1).float().mean().item()
    # diversity within each class of the first judged attribute (the digit; the shape)
    first, sizes = judge.attributes[0], datamodule.data_spec["attribute_sizes"][judge.columns[0]]
    train_classes = judge.targets(train["attributes"])[:, 0]
    per_class = []
    for value in range(sizes):
        chosen = truth[:, 0] == value
        generated, real = samples[chosen], train["image"][train_classes == value]
        row = {first: value, "samples": int(chosen.sum()),
               "accuracy": (predicted[chosen] == truth[chosen]).all(1).float().mean().item(),
               "pairwise_distance_generated": mean_pairwise_distance(generated),
               "pairwise_distance_real": mean_pairwise_distance(real)}
        row["diversity_ratio"] = row["pairwise_distance_generated"] / row["pairwise_distance_real"]
        per_class.append(row)
    return {"direction": f"{model.condition}->image", "samples": int(samples.shape[0]),
            "judged_attributes": list(judge.attributes),
            "accuracy": (predicted == truth).all(1).float().mean().item(),
            "accuracy_per_attribute": {name: (predicted[:, i] == truth[:, i]).float().mean().item()
                                       for i, name in enumerate(judge.attributes)},
            "judge_accuracy_on_real_test_images": real_accuracy,
            "min_diversity_ratio": min(c["diversity_ratio"] for c in per_class),
            "mean_diversity_ratio": sum(c["diversity_ratio"] for c in per_class) / len(per_class),
            "generation_seconds": round(seconds, 1), "per_class": per_class}


def crop_frames(video: torch.Tensor, size: int) -> torch.Tensor:
    """``B,F,1,V,V`` -> ``B*F,1,size,size``: the window of each frame holding the most ink."""
    frames = video.flatten(0, 1).float()
    ink = (frames + 1) / 2
    window_ink = F.avg_pool2d(ink, size, stride=1)  # B*F,1,V-size+1,V-size+1
    positions = window_ink.flatten(1).argmax(1)
    side = window_ink.shape[-1]
    rows, cols = positions // side, positions % side
    return torch.stack([frames[i, :, r:r + size, c:c + size]
                        for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])


def centroid_direction(video: torch.Tensor) -> torch.Tensor:
    """Direction index (up, down, left, right) of the ink centroid's move from the first to the last frame."""
    ink = ((video[:, :, 0].float() + 1) / 2).clamp_min(0)  # B,F,V,V
    side = ink.shape[-1]
    grid = torch.arange(side, dtype=torch.float32)
    mass = ink.sum((-1, -2)).clamp_min(1e-6)
    rows = (ink.sum(-1) * grid).sum(-1) / mass  # B,F
    cols = (ink.sum(-2) * grid).sum(-1) / mass
    d_row, d_col = rows[:, -1] - rows[:, 0], cols[:, -1] - cols[:, 0]
    vertical = d_row.abs() >= d_col.abs()
    return torch.where(vertical, torch.where(d_row < 0, 0, 1), torch.where(d_col < 0, 2, 3))


def video_metrics(model, datamodule, repeats: int) -> dict:
    # the image judge learns from real images: the same source rendering images instead of clips
    image_source = type(datamodule)(**{**datamodule.hparams, "modalities": ["image"]})
    image_judge, video_judge = get_judge(image_source, "image"), get_judge(datamodule, "video")
    test = whole_split(datamodule, "test")
    conditions = {k: test[k].repeat_interleave(repeats, 0) for k in ("text", "text_mask")}
    attributes = test["attributes"].repeat_interleave(repeats, 0)
    started = time.time()
    samples = generate_all(model, conditions, batch_size=64)
    seconds = time.time() - started
    size = datamodule.image_size

    def measure(videos: torch.Tensor, truth: torch.Tensor) -> dict:
        frames = videos.shape[1]
        frame_digits = image_judge.predict(crop_frames(videos, size))[:, 0].view(-1, frames)
        read = video_judge.predict(videos)
        return {"clips": int(videos.shape[0]),
                "frame_digit_accuracy": (frame_digits == truth[:, :1]).float().mean().item(),
                "direction_accuracy_centroid": (centroid_direction(videos) == truth[:, 1]).float().mean().item(),
                "video_judge_digit_accuracy": (read[:, 0] == truth[:, 0]).float().mean().item(),
                "video_judge_direction_accuracy": (read[:, 1] == truth[:, 1]).float().mean().item()}

    return {"direction": "text->video", "generated": measure(samples, attributes),
            "real_test_videos": measure(test["video"], test["attributes"]), "generation_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/gan/digits.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--repeats", type=int, default=5, help="samples per test condition")
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/gan_<name>.json)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / args.config).read_text())
    name = Path(args.config).stem
    train_seconds = None
    if not args.skip_fit:
        train_seconds = fit_from_scratch(args.config, config, args.fit_args)
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    torch.manual_seed(0)
    metrics = video_metrics(model, datamodule, args.repeats) if model.output == "video" else \
        image_metrics(model, datamodule, args.repeats)
    command = (f"OMP_NUM_THREADS=1 python benchmarks/gan_quality.py --config {args.config}"
               + (" --skip-fit" if args.skip_fit else "") + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
               + (f" --out {args.out}" if args.out else "")
               + (" --fit-args " + " ".join(args.fit_args) if args.fit_args else ""))
    report = {"command": command, "config": args.config, "train_seconds_including_startup": train_seconds,
              "max_time": config["trainer"].get("max_time"), "fit_args": args.fit_args,
              "discriminator_steps": stored.get("gan_steps", {}).get("discriminator"),
              "generator_steps": stored.get("gan_steps", {}).get("generator"), "epochs": stored.get("epoch"),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "torch": torch.__version__, **metrics}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gan_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k != "per_class"}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The readers of scenes: an Aligner against each caption's swapped twins (ARO-style) and a Captioner
against the truth, each trained fresh within its recipe's budget (or ``--skip-fit``).

    python benchmarks/scenes_readers.py --config configs/aligner/scenes.yaml [--skip-fit] [--items 400]
    python benchmarks/scenes_readers.py --config configs/captioner/scenes.yaml [--skip-fit] [--items 400]

An Aligner is scored by ``metrics.scenes.hard_negative_accuracy`` on the relation and binding items
among the first ``--items`` of the test split and of the heldout split (each image against its caption
and each twin: colours swapped, shapes swapped, relation reversed; a bag-of-words encoder scores 0.5),
beside its text -> image recall@1 among 100 test items. A Captioner is scored by
``metrics.scenes.caption_accuracy`` (greedy captions that state every object and the relation right) on
the first ``--items`` of the heldout split (every caption names a held-out colour-shape pair) and of the
test split. Writes benchmarks/results/scenes_<family>.json with the command, steps reached and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
import yaml
from recipe_run import checkpoint_dir, fit_from_scratch

from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.metrics.scenes import (aligner_similarity, caption_accuracy, hard_negative_accuracy,
                                            model_captioner)
from mmgen_lightning.models.aligner import Aligner, gallery_recall
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.captioner import Captioner

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def text_to_image_recall(aligner, datamodule, items: int = 100) -> float:
    """Recall@1 of text -> image among the first ``items`` test items (one gallery)."""
    dataset = datamodule.dataset("test")
    batch = torch.utils.data.default_collate([dataset[i] for i in range(min(items, len(dataset)))])
    return gallery_recall(aligner.embed(batch, "text"), aligner.embed(batch, "image"), items, ks=(1,))[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--items", type=int, default=400, help="items per split")
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/scenes_<family>.json)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    command = "python benchmarks/scenes_readers.py " + " ".join(sys.argv[1:])
    load_before = [round(x, 2) for x in os.getloadavg()]
    train_seconds = None if args.skip_fit else fit_from_scratch(args.config, config, args.fit_args)
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt).eval()
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    if isinstance(model, Aligner):
        family = "aligner"
        similarity = aligner_similarity(model)
        scores = {split: hard_negative_accuracy(similarity, datamodule, split, args.items)
                  for split in ("test", "heldout")}
        scores["text_to_image_recall@1_of_100"] = text_to_image_recall(model, datamodule)
        print(json.dumps({split: {k: v for k, v in row.items() if k != "per_kind"} if isinstance(row, dict) else row
                          for split, row in scores.items()}), flush=True)
    elif isinstance(model, Captioner):
        family = "captioner"
        captioner = model_captioner(model)
        scores = {split: caption_accuracy(captioner, datamodule, split, args.items) for split in ("heldout", "test")}
        print(json.dumps({split: {k: v for k, v in row.items() if k != "mistakes"} for split, row in scores.items()}),
              flush=True)
    else:
        raise SystemExit(f"--config {args.config}: a scenes Aligner or Captioner recipe, not a {type(model).__name__}")
    report = {"command": command, "config": args.config, "train_seconds_including_startup": train_seconds,
              "max_time": config["trainer"].get("max_time"), "fit_args": args.fit_args,
              "optimizer_steps": stored.get("global_step"), "epochs": stored.get("epoch"),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)",
              "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "torch": torch.__version__, "items_per_split": args.items, "scores": scores}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"scenes_{family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Train an Aligner recipe fresh within its max_time (one torch thread), then measure retrieval among
the first 100 items of the test split (held out: never trained on).

    python benchmarks/aligner_quality.py --config configs/aligner/shapes.yaml [--skip-fit]

Two readings of recall@k, text -> image and image -> text:

- ``exact``: the query's own item must be in the top k. A caption does not say everything an image
  shows (a shape's exact spot and size jitter; a digit's handwriting), so several items can fit a
  caption equally; its ceiling (``exact_recall_at_1_ceiling``) is the mean over queries of
  ``1 / (items among the 100 whose caption-stated, image-visible attributes equal the query's)``,
  computed on the same 100 items: the expected exact recall@1 of a retriever that finds every fitting
  item and picks among them at random (equal to the number of distinct attribute combinations / 100;
  a run may land a little above it by chance);
- ``relevant``: a hit when an item showing everything the caption states (the compared attributes
  of ``metrics.coherence``: shape, color, size, position for Shapes; the digit for Digits) is in the
  top k; its ceiling is 1.

Writes benchmarks/results/aligner_<config name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
import yaml
from recipe_run import checkpoint_dir, fit_from_scratch
from torch.utils.data import DataLoader, Subset

from mmgen_lightning.metrics.coherence import compared_attributes
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.aligner import gallery_recall
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def retrieval(model, datamodule, items: int = 100) -> dict:
    test = datamodule.dataset("test")
    batch = next(iter(DataLoader(Subset(test, range(min(items, len(test)))), batch_size=items)))
    names = list(datamodule.data_spec["attribute_names"])
    compared = compared_attributes(datamodule, "text->image")
    columns = [names.index(n) for n in compared]
    key = batch["attributes"][:, columns]
    relevant = (key[:, None, :] == key[None, :, :]).all(-1)  # N,N: same caption-stated, image-visible attributes
    text, image = model.embed(batch, "text"), model.embed(batch, "image")
    report = {"items": int(key.shape[0]), "compared_attributes": compared,
              "exact_recall_at_1_ceiling": (1.0 / relevant.sum(1).double()).mean().item(),
              "items_sharing_the_query_attributes_mean": relevant.sum(1).double().mean().item()}
    for query, candidate, name in ((text, image, "text->image"), (image, text, "image->text")):
        exact = gallery_recall(query, candidate, items)
        hits = gallery_recall(query, candidate, items, relevant=relevant)
        report[name] = {**{f"exact_recall@{k}": v for k, v in exact.items()},
                        **{f"relevant_hit@{k}": v for k, v in hits.items()}}
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/aligner/shapes.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--items", type=int, default=100, help="held-out test items ranked")
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/aligner_<name>.json)")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    name = Path(args.config).stem
    train_seconds = None
    if not args.skip_fit:
        train_seconds = fit_from_scratch(args.config, config, args.fit_args)
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt)
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    report = {"command": f"OMP_NUM_THREADS=1 python benchmarks/aligner_quality.py --config {args.config}"
                         + (" --skip-fit" if args.skip_fit else "") + (f" --items {args.items}" if args.items != 100 else ""),
              "config": args.config, "max_time": config["trainer"].get("max_time"), "fit_args": args.fit_args,
              "train_seconds_including_startup": train_seconds, "steps": stored.get("global_step"),
              "epochs": stored.get("epoch"), "logit_scale": model.logit_scale_value().item(),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         "shared with other jobs",
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
              **retrieval(model, datamodule, args.items)}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"aligner_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Does a recipe train to the same weights on two versions of the code?

Builds the recipe's model and data (as ``mmgen fit`` does: the datamodule's ``data_spec`` and
tokenizer handed to the model), seeds everything with the recipe's seed, trains ``--steps`` steps with
Lightning on one CPU thread (no logger, callbacks, validation or checkpoints, so only the family's own
code runs), and prints a fingerprint of the trained weights: every parameter and buffer's float64 sum
and sum of squares, sorted (state_dict names may differ between versions; the values may not).

Run it once per code version and compare the two JSON lines::

    PYTHONPATH=/path/to/old python benchmarks/recipe_equivalence.py configs/gan/digits.yaml --steps 20
    PYTHONPATH=$PWD python benchmarks/recipe_equivalence.py configs/gan/digits.yaml --steps 20

Each run reads the recipe of its own tree (``--root``, default: the folder above this script).
``--compare A.json B.json`` prints the tensors each side has that the other lacks (none: the same weights).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from recipe_run import build_recipe  # noqa: E402


def fingerprint(module: torch.nn.Module) -> list[list[float]]:
    values = [t.detach().double() for t in module.state_dict().values() if t.is_floating_point()]
    return sorted([round(float(v.sum()), 6), round(float(v.pow(2).sum()), 6), v.numel()] for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("--compare", nargs=2, metavar="JSON", help="two earlier outputs to compare")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    if args.compare:
        first, second = (json.loads(Path(path).read_text()) for path in args.compare)
        for stage in ("initial", "trained"):
            a, b = ({tuple(x) for x in side[stage]} for side in (first, second))
            print(f"{stage}: {len(first[stage])} vs {len(second[stage])} tensors; only in the first {sorted(a - b)}; "
                  f"only in the second {sorted(b - a)}")
        return
    torch.set_num_threads(1)
    root = Path(args.root)
    config = yaml.safe_load((root / args.config).read_text())
    L.seed_everything(config.get("seed_everything", 0), workers=True)
    model, datamodule = build_recipe(config)
    before = fingerprint(model)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[])
    trainer.fit(model, datamodule=datamodule)
    print(json.dumps({"config": args.config, "steps": args.steps, "initial": before, "trained": fingerprint(model)}))


if __name__ == "__main__":
    main()

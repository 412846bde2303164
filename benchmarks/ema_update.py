"""What one EMA update costs per optimizer step, for each flow recipe's model: Lightning's per-tensor
``get_ema_avg_fn`` (what ``EMAWeightAveraging`` passes) against the project's fused ``ema_update``
(``torch._foreach_lerp_``, frozen weights left out). One torch thread.

    python benchmarks/ema_update.py [--recipes configs/flow/shapes.yaml configs/flow/emoji64.yaml]

Writes benchmarks/results/ema_update.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml
from recipe_run import build_recipe
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from mmgen_lightning.callbacks.ema import ema_update

ROOT = Path(__file__).resolve().parents[1]


def milliseconds_per_update(model: torch.nn.Module, repeats: int, **averaging) -> float:
    average = AveragedModel(model, use_buffers=True, **averaging)
    average.update_parameters(model)  # the first update copies
    average.update_parameters(model)
    started = time.perf_counter()
    for _ in range(repeats):
        average.update_parameters(model)
    return 1000 * (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", nargs="+", default=["configs/flow/shapes.yaml", "configs/flow/digits.yaml",
                                                         "configs/flow/emoji64.yaml"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ema_update.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for recipe in args.recipes:
        config = yaml.safe_load((ROOT / recipe).read_text())
        config["model"]["init_args"].pop("latent", None)  # the frozen autoencoder is not averaged either way
        model, _ = build_recipe(config)
        frozen = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
        per_tensor = milliseconds_per_update(model, args.repeats, avg_fn=get_ema_avg_fn(0.99))
        fused = milliseconds_per_update(model, args.repeats, multi_avg_fn=ema_update(0.99, frozen=frozen))
        rows.append({"recipe": recipe, "parameters": sum(p.numel() for p in model.parameters()),
                     "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                     "tensors": len(list(model.parameters())), "per_tensor_ms": round(per_tensor, 2),
                     "fused_ms": round(fused, 2)})
        print(rows[-1], flush=True)
    result = {"command": "python benchmarks/ema_update.py", "rows": rows,
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "machine": f"{platform.processor() or platform.machine()}, 1 thread", "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

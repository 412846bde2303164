"""Sampling speed of a Captioner with and without the KV cache, in one run.

    python benchmarks/captioner_kv_cache.py [--tokens 128] [--batch 1 16 64] [--repeats 3]

Builds the architecture of an image recipe (default ``configs/captioner/digits.yaml``; random
weights, since speed does not depend on them) with room for ``--tokens`` positions, and greedily
decodes exactly ``--tokens`` tokens per caption (``min_new_tokens`` forbids an early ``[EOS]``)
for a batch of images, with ``use_cache=True`` and ``use_cache=False`` (the same ``generate()``
call, prompt and lengths; only the flag differs), alternating, best of ``--repeats``, for each
batch size. Both must give the same tokens. The recipe's decoder is tiny (2 layers, width 64), so
a decoding step costs mostly ``generate()``'s fixed per-step work, which the cache cannot save;
the saving grows with the batch, so every batch size is reported.
Writes benchmarks/results/captioner_kv_cache.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from mmgen_lightning.models.captioner import Captioner

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/captioner/digits.yaml", help="recipe whose model sizes are used")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine's noise down)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / args.config).read_text())
    module_name, _, class_name = config["data"]["class_path"].rpartition(".")
    datamodule = getattr(importlib.import_module(module_name), class_name)(**config["data"]["init_args"])
    torch.manual_seed(0)
    options = config["model"]["init_args"]
    network = {**options.get("network", {}), "max_positions": args.tokens + 1}
    model = Captioner(datamodule.data_spec, **{**options, "network": network})
    model.eval()
    size, channels = model.spec("image_size"), model.spec("image_channels")
    knobs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    model.generate({"image": torch.zeros(2, channels, size, size)}, 2, max_new_tokens=4)  # warm-up
    rows = []
    for batch in args.batch:
        images = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        seconds: dict[bool, list[float]] = {True: [], False: []}
        outputs = {}
        for _ in range(args.repeats):
            for use_cache in (True, False):
                started = time.perf_counter()
                outputs[use_cache] = model.generate({"image": images}, batch, use_cache=use_cache, **knobs)["text"]
                seconds[use_cache].append(time.perf_counter() - started)
        assert outputs[True].shape[1] == args.tokens + 1, outputs[True].shape
        cached, uncached = min(seconds[True]), min(seconds[False])
        rows.append({"batch": batch, "seconds_with_cache": round(cached, 3),
                     "seconds_without_cache": round(uncached, 3), "speedup": round(uncached / cached, 2),
                     "identical_tokens": torch.equal(outputs[True], outputs[False]),
                     "all_seconds": {"with_cache": [round(t, 3) for t in seconds[True]],
                                     "without_cache": [round(t, 3) for t in seconds[False]]}})
        print(f"batch {batch:4d}: {cached:7.3f} s with the cache, {uncached:7.3f} s without, "
              f"{uncached / cached:5.2f}x, identical tokens: {rows[-1]['identical_tokens']}", flush=True)
    decoder = model.decoder.config
    tokens = model.encoder.grid[0] * model.encoder.grid[1]
    report = {"config": args.config, "decoder": f"GPT-2 blocks from transformers, {decoder.n_layer} layers, "
                                                f"width {decoder.n_embd}, cross-attention to {tokens} image tokens",
              "tokens_per_caption": args.tokens, "decoding": "greedy", "repeats": args.repeats, "target_speedup": 5.0,
              "results": rows,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                         f"{torch.get_num_threads()} torch threads",
              "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}
    out = ROOT / "benchmarks" / "results" / "captioner_kv_cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if not all(row["identical_tokens"] for row in rows):
        raise SystemExit("cached and uncached decoding gave different tokens")


if __name__ == "__main__":
    main()

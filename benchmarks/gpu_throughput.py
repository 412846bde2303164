"""GPU throughput of the digits recipes: training images/s of the ConditionalGAN and the
MultimodalVAE, and the Captioner's sampling tokens/s. Run by benchmarks/gpu.sh.

    python benchmarks/gpu_throughput.py [--cpu] [--batch 512] [--steps 60] [--no-compile]

On a GPU: ``precision="bf16-mixed"``, channels_last weights, ``torch.compile`` of each family's
networks (the modules its training step calls), a batch of ``--batch``; Lightning places everything
(no ``.cuda()`` here). Each training is timed over the steps after ``--warmup`` (compilation happens
in the warm-up). The Captioner greedily decodes ``--tokens`` tokens for ``--batch`` images with the
KV cache, random weights (speed does not depend on them). ``--cpu`` is the smoke mode: the same code
path on the CPU, fp32, no compile, a small batch and a few steps, so the script stays tested on
machines without a GPU. Writes benchmarks/results/gpu.json (or gpu_cpu_smoke.json with ``--cpu``).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import StepTimer, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: the sub-networks each family's training step calls through ``__call__`` (so compiling them helps)
COMPILED = {"vae": ("autoencoder.encoders", "autoencoder.decoders"), "gan": ("generator", "discriminator")}


def compile_networks(model, family: str) -> None:
    for name in COMPILED[family]:
        network = functools.reduce(getattr, name.split("."), model)
        if isinstance(network, torch.nn.ModuleDict):
            for key in list(network.keys()):
                network[key] = torch.compile(network[key])
        elif network is not None:
            setattr(model, name, torch.compile(network))


def train_throughput(family: str, args, accelerator: str, precision: str) -> dict:
    config = yaml.safe_load((ROOT / f"configs/{family}/digits.yaml").read_text())
    config["data"]["init_args"]["batch_size"] = args.batch
    torch.manual_seed(0)
    model, datamodule = build(config)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        compile_networks(model, family)
    timer = StepTimer(args.warmup + args.steps + 1)
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=10_000, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer])
    trainer.fit(model, datamodule=datamodule)
    timed = timer.ends[args.warmup:]
    steps_per_second = (len(timed) - 1) / (timed[-1] - timed[0])
    return {"family": type(model).__name__, "config": f"configs/{family}/digits.yaml", "batch": args.batch,
            "timed_steps": len(timed) - 1, "steps_per_second": steps_per_second,
            "images_per_second": steps_per_second * args.batch,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if accelerator == "gpu" else None}


@torch.no_grad()
def sampling_throughput(args, device: torch.device, dtype: torch.dtype) -> dict:
    config = yaml.safe_load((ROOT / "configs/captioner/digits.yaml").read_text())
    config["model"]["init_args"].setdefault("network", {})["max_positions"] = args.tokens + 1
    torch.manual_seed(0)
    model, _ = build(config)
    model = model.to(device).eval()
    size, channels = model.spec("image_size"), model.spec("image_channels")
    images = torch.rand(args.batch, channels, size, size, device=device) * 2 - 1
    knobs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        model.generate({"image": images[:2]}, 2, max_new_tokens=4)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        text = model.generate({"image": images}, args.batch, **knobs)["text"]
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"family": "Captioner", "config": "configs/captioner/digits.yaml", "batch": args.batch,
            "tokens_per_caption": args.tokens, "generated_shape": list(text.shape), "seconds": seconds,
            "tokens_per_second": args.batch * args.tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true", help="smoke mode on the CPU: fp32, no compile, tiny run")
    parser.add_argument("--batch", type=int, default=None, help="default 512 on a GPU, 16 with --cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 60 on a GPU, 3 with --cpu")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps; default 15 on a GPU, 1 with --cpu")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per caption; default 64, 8 with --cpu")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = parser.parse_args()
    gpu = torch.cuda.is_available() and not args.cpu
    if not gpu and not args.cpu:
        raise SystemExit("no CUDA device visible: run with --cpu for the smoke mode")
    args.batch = args.batch or (512 if gpu else 16)
    args.steps = args.steps or (60 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (15 if gpu else 1)
    args.tokens = args.tokens or (64 if gpu else 8)
    args.compile = args.compile and gpu
    accelerator, precision = ("gpu", "bf16-mixed") if gpu else ("cpu", "32-true")
    torch.set_float32_matmul_precision("high")
    results = []
    for family in ("gan", "vae"):
        started = time.time()
        results.append(train_throughput(family, args, accelerator, precision))
        results[-1]["wall_seconds_including_compile"] = round(time.time() - started, 1)
        print(json.dumps(results[-1]), flush=True)
    results.append(sampling_throughput(args, torch.device("cuda" if gpu else "cpu"),
                                       torch.bfloat16 if gpu else torch.float32))
    print(json.dumps(results[-1]), flush=True)
    report = {"command": "python benchmarks/gpu_throughput.py" + (" --cpu" if args.cpu else ""),
              "device": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})",
              "precision": precision, "compile": args.compile, "channels_last": args.channels_last,
              "results": results, "torch": torch.__version__, "lightning": L.__version__}
    out = ROOT / "benchmarks" / "results" / ("gpu.json" if gpu else "gpu_cpu_smoke.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| family | batch | images/s or tokens/s |\n|---|---|---|")
    for row in results:
        rate = row.get("images_per_second") or row.get("tokens_per_second")
        unit = "images/s" if "images_per_second" in row else "tokens/s"
        print(f"| {row['family']} | {row['batch']} | {rate:.0f} {unit} |")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

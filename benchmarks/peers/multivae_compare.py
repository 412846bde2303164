"""Our MultimodalVAE against MultiVae (the reference library for multimodal VAEs), same fusion,
same networks, same data, same steps and batch size.

    python benchmarks/peers/multivae_compare.py [--steps 400] [--fusions mopoe poe mmvae_plus] [--compiled] [--out FILE]

For each fusion (MoPoE, MVAE = ``poe``, MMVAE+ = ``mmvae_plus``): our model trains with a Lightning ``Trainer`` (no
logger, no checkpointing; the module's own per-step ``self.log`` calls still run), and MultiVae's
``MoPoE``/``MVAE``/``MMVAEPlus`` train with a plain loop in their own virtualenv, ``benchmarks/.peer-venv``
(``benchmarks/peers/multivae_run.py``), both on 1 thread under the same CPU slot. Both get
DigitsDataModule's image + caption tensors (16 px, batch 64, shuffled, last batch dropped), the
captions padded to the longest caption of the data (so padding costs neither side), the
same encoder/decoder classes (mmgen_lightning/models/layers), latent size, Laplace(0.1) pixel
likelihood, GRU caption likelihood, AdamW(1e-3) and seed. Reported per fusion:

- steps/s over the steps after ``--warmup`` (data included), and the ratio ours / MultiVae; with
  ``--compiled`` both sides also train compiled (ours: the ``CompileNetworks`` callback; MultiVae: each
  encoder and decoder through ``nn.Module.compile``, the same inductor compile), and the table gains
  ours compiled / MultiVae as shipped and ours compiled / MultiVae compiled;
- final ELBO: each library's own training objective on the test split (identical likelihoods and
  KL terms, so the same formula; MVAE's is the sum of the joint and unimodal ELBOs);
- MMVAE+: both sides get a private latent of ``private_dim`` per modality (the encoders' output grows by
  ``2 * private_dim``, the decoders read ``[z, w]``) and ``K = cross_samples``; each trains its own
  objective: MultiVae's is the original code's importance-weighted (DReG-style) bound with ``K`` samples of
  every latent and every reconstruction, ours the ELBO with ``K`` draws of ``w ~ r`` only in the
  cross-reconstructions (``fusion: mmvae_plus, cross_samples: K``);
- per-digit diversity of the text->image samples (one per test item: the digits' captions name only the
  digit, so the samples of one digit are draws from one condition): mean pairwise L2 at 8x8 divided by the
  real training digits' (``benchmarks/vae_quality.py``'s measure);
- coherence on the test split: text->image read by the digits image judge
  (mmgen_lightning/metrics/judges.py, trained on real training images only) and image->text read
  by the captions' parser; both models sample ``z`` from the condition's posterior and decode the
  mean image / the greedy caption.

The peer's virtualenv is made on first use (``python3 -m venv`` + ``pip install torch==<ours>
multivae``); when that fails the error text is written to the results and the table says so.
Writes benchmarks/results/peer_multivae.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from mmgen_lightning.callbacks import CompileNetworks
from mmgen_lightning.datamodules import DigitsDataModule
from mmgen_lightning.datamodules.digits import parse_caption
from mmgen_lightning.metrics.judges import get_judge, judge_accuracy, judge_path
from mmgen_lightning.models import MultimodalVAE
from mmgen_lightning.objectives.vae import multimodal_elbo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the quality benchmarks' shared helpers
from recipe_run import pairwise_spread  # noqa: E402  (the diversity measure of benchmarks/vae_quality.py)
PEER_VENV = ROOT / "benchmarks" / ".peer-venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
SIDES = ("ours", "multivae", "ours_compiled", "multivae_compiled")  # the last two with --compiled
SIZES = {"latent_dim": 32, "width": 32, "text_width": 128, "image_scale": 0.1, "lr": 1e-3, "seed": 0,
         "private_dim": 8, "cross_samples": 8}  # the last two: MMVAE+ only


def ensure_peer(timeout: int) -> str | None:
    """Make the peer's virtualenv if it is missing; returns the error text when that fails."""
    if PEER_PYTHON.is_file():
        probe = subprocess.run([str(PEER_PYTHON), "-c", "import multivae"], capture_output=True, text=True)
        if probe.returncode == 0:
            return None
    steps = [[sys.executable, "-m", "venv", str(PEER_VENV)],
             [str(PEER_VENV / "bin" / "pip"), "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
             [str(PEER_VENV / "bin" / "pip"), "install", "-q", "multivae"]]
    for command in steps:
        print("peer setup:", " ".join(command), flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` did not finish within {timeout} s"
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {(done.stderr or done.stdout)[-1500:]}"
    return None


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.ends.append(time.perf_counter())


def export(datamodule: DigitsDataModule, path: Path) -> None:
    """The train/test tensors and sizes the peer needs, text packed as ``long B,2,L`` (ids, mask)."""
    splits = {}
    for split in ("train", "test"):
        tensors = datamodule.dataset(split).tensors
        splits[split] = {"image": tensors["image"],
                         "text": torch.stack([tensors["text"], tensors["text_mask"].long()], 1)}
    tokenizer = datamodule.tokenizer
    meta = {**SIZES, "image_size": datamodule.image_size, "vocab_size": tokenizer.vocab_size,
            "max_text_length": datamodule.max_text_length, "batch_size": datamodule.batch_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id}
    torch.save({"train": splits["train"], "test": splits["test"], "meta": json.dumps(meta)}, path)


def run_ours(datamodule: DigitsDataModule, fusion: str, steps: int, warmup: int,
             compiled: bool = False) -> tuple[dict, dict]:
    torch.manual_seed(SIZES["seed"])
    plus = fusion == "mmvae_plus"
    network = {"latent_dim": SIZES["latent_dim"], "width": SIZES["width"], "text_width": SIZES["text_width"],
               "private_dim": SIZES["private_dim"] if plus else 0}
    objective = {"likelihood": "laplace", "learn_scale": False, "init_scale": SIZES["image_scale"],
                 "cross_samples": SIZES["cross_samples"] if plus else 1}
    model = MultimodalVAE(datamodule.data_spec, modalities=["image", "text"], fusion=fusion, network=network,
                          objective=objective, optimization={"lr": SIZES["lr"]})
    model.tokenizer = datamodule.tokenizer
    timer = StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer] + ([CompileNetworks()] if compiled else []))
    trainer.fit(model, datamodule=datamodule)
    timed = timer.ends[warmup:]
    model.eval()
    test = datamodule.dataset("test").tensors
    torch.manual_seed(SIZES["seed"])
    with torch.no_grad():
        losses = [multimodal_elbo(model.autoencoder, model.autoencoder.read({k: v[rows] for k, v in test.items()}),
                                  fusion, model.config.objective, model.config.objective.beta)["loss"].item()
                  * len(rows) for rows in torch.arange(len(test["image"])).split(256)]
        count = len(test["image"])
        images = model.sample({"text": test["text"], "text_mask": test["text_mask"]}, count, ["image"])["image"]
        texts = model.sample({"image": test["image"]}, count, ["text"])["text"]
    result = {"library": "mmgen_lightning" + (" compiled" if compiled else ""),
              "parameters": sum(p.numel() for p in model.parameters()),
              "steps": trainer.global_step, "timed_steps": len(timed) - 1,
              "steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]),
              "final_train_loss_mean_last_20": sum(timer.losses[-20:]) / len(timer.losses[-20:]),
              "test_elbo": -sum(losses) / count, "threads": torch.get_num_threads()}
    return result, {"text_to_image": images, "image_to_text": texts}


def run_peer(data: Path, fusion: str, steps: int, warmup: int, out: Path, compiled: bool = False) -> tuple[dict, dict]:
    command = [str(PEER_PYTHON), str(ROOT / "benchmarks/peers/multivae_run.py"), "--data", str(data), "--fusion",
               fusion, "--steps", str(steps), "--warmup", str(warmup), "--out", str(out)] + (["--compile"] * compiled)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"MultiVae run failed: {done.stderr[-2000:]}")
    saved = torch.load(out, weights_only=True)
    result = json.loads(saved["result"])
    if compiled:
        result["library"] += " compiled"
    return result, saved


def diversity(images: torch.Tensor, test: dict, train: dict) -> float:
    """Mean over digits of the text->image samples' spread / the real training digits' spread."""
    digits, real = test["attributes"][:, 0], train["attributes"][:, 0]
    ratios = [pairwise_spread(images[digits == d]) / pairwise_spread(train["image"][real == d])
              for d in sorted(set(digits.tolist()))]
    return sum(ratios) / len(ratios)


def coherence(samples: dict, test: dict, tokenizer, judge) -> dict[str, float]:
    digits = test["attributes"][:, :1]
    text_to_image = judge_accuracy(judge, samples["text_to_image"], test["attributes"])[0].item()
    read = [parse_caption(text) for text in tokenizer.decode(samples["image_to_text"].cpu())]
    image_to_text = sum(r is not None and r["digit"] == d for r, d in zip(read, digits[:, 0].tolist())) / len(read)
    return {"text->image": text_to_image, "image->text": image_to_text}


def table(report: dict) -> str:
    if "error" in report:
        return f"MultiVae could not be run: {report['error']}"
    return "\n".join(table_lines(report))


def table_lines(report: dict) -> list[str]:
    """The side-by-side markdown table of a report without an error (also in RESULTS.md, by run_all.py)."""
    lines = ["| fusion | library | params | steps | steps/s | ours / MultiVae | test ELBO | text->image | "
             "image->text | text->image diversity / real |", "|---|---|---|---|---|---|---|---|---|---|"]
    for fusion, row in report["fusions"].items():
        for side in SIDES:
            if side not in row:
                continue
            r = row[side]
            if side == "ours":
                ratio = f"{row['speed_ratio']:.2f}x"
            elif side == "ours_compiled":  # both compiled sides ran, so both ratios are there
                ratio = (f"{row['compiled_speed_ratio']:.2f}x vs shipped, "
                         f"{row['compiled_vs_compiled_speed_ratio']:.2f}x vs compiled")
            else:
                ratio = ""
            lines.append(f"| {fusion} | {r['library']} | {r['parameters']:,} | {r['steps']} | "
                         f"{r['steps_per_second']:.2f} | {ratio} | {r['test_elbo']:.1f} | "
                         f"{r['coherence']['text->image']:.3f} | {r['coherence']['image->text']:.3f} | "
                         + (f"{r['diversity']:.3f} |" if "diversity" in r else "- |"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400, help="training steps of each model")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--fusions", nargs="+", default=["mopoe", "poe"], choices=["mopoe", "poe", "mmvae_plus"])
    parser.add_argument("--out", default="benchmarks/results/peer_multivae.json", help="the report (JSON)")
    parser.add_argument("--setup-timeout", type=int, default=900, help="seconds for each peer install step")
    parser.add_argument("--compiled", action="store_true",
                        help="also train both compiled (ours: the CompileNetworks callback; MultiVae: its encoders and "
                             "decoders through nn.Module.compile), each compile left out of the timing by --warmup")
    args = parser.parse_args()
    command = f"python benchmarks/peers/multivae_compare.py --steps {args.steps} --warmup {args.warmup} " \
              f"--fusions {' '.join(args.fusions)} --out {args.out}" + (" --compiled" if args.compiled else "")
    report: dict = {"command": command, "peer_venv": str(PEER_VENV.relative_to(ROOT)),
                    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
                               "(shared machine)", "torch": torch.__version__, "lightning": L.__version__}
    out = ROOT / args.out
    error = ensure_peer(args.setup_timeout)
    if error:
        report["error"] = error
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(table(report))
        return
    version = subprocess.run([str(PEER_PYTHON), "-c", "import multivae, importlib.metadata as m; "
                              "print(m.version('multivae'))"], capture_output=True, text=True).stdout.strip()
    report["multivae"] = version
    datamodule = DigitsDataModule(modalities=["image", "text"], image_size=16, batch_size=64)
    # pad captions only to the longest one in the data, for both: the peer's decoders cannot skip padding
    longest = max(int(datamodule.dataset(split).tensors["text_mask"].sum(1).max()) for split in ("train", "test"))
    datamodule = DigitsDataModule(modalities=["image", "text"], image_size=16, batch_size=64,
                                  max_text_length=longest)
    datamodule.setup("fit")
    report["max_text_length"] = longest
    judge = get_judge(datamodule, "image")
    report["judge"] = judge_path(datamodule, "image").name
    test, train = datamodule.dataset("test").tensors, datamodule.dataset("train").tensors
    report["fusions"] = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "digits.pt"
        export(datamodule, data)
        for index, fusion in enumerate(args.fusions):
            # alternate who goes first, so a change in the machine's load does not favour one side
            order = SIDES if args.compiled else SIDES[:2]
            order = order if index % 2 == 0 else order[::-1]
            row = {}
            for side in order:
                print(f"{fusion}: training {side} for {args.steps} steps", flush=True)
                compiled = side.endswith("_compiled")
                result, samples = (run_ours(datamodule, fusion, args.steps, args.warmup, compiled)
                                   if side.startswith("ours") else
                                   run_peer(data, fusion, args.steps, args.warmup, Path(scratch) / f"{fusion}.pt",
                                            compiled))
                result["coherence"] = coherence(samples, test, datamodule.tokenizer, judge)
                result["diversity"] = diversity(samples["text_to_image"], test, train)
                result["load_average"] = os.getloadavg()
                row[side] = result
            row["speed_ratio"] = row["ours"]["steps_per_second"] / row["multivae"]["steps_per_second"]
            if args.compiled:
                row["compiled_speed_ratio"] = row["ours_compiled"]["steps_per_second"] / row["multivae"]["steps_per_second"]
                row["compiled_vs_compiled_speed_ratio"] = (row["ours_compiled"]["steps_per_second"]
                                                           / row["multivae_compiled"]["steps_per_second"])
            row["meets_speed_target_1_5x"] = max(row["speed_ratio"], row.get("compiled_speed_ratio", 0.0)) >= 1.5
            row["meets_coherence_target"] = all(row["ours"]["coherence"][d] >= row["multivae"]["coherence"][d]
                                                for d in row["ours"]["coherence"])
            report["fusions"][fusion] = row
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

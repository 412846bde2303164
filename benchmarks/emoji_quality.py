"""Train an emoji text -> image recipe fresh within its wall-clock budget (or ``--skip-fit``), then score it
with no attribute judge for the figure (about 1,900 of them, most drawn once):

* **R-precision among 100 on seen names**: ``--names`` training names, one sample each; an Aligner trained
  on the real pairs (``--aligner``, or ``--aligner-config`` trained first, outside the flow's budget) ranks
  each sample's own name against 99 other names; beside it the real renders' own R-precision, the ceiling
  this aligner reads. Issue 27's target: samples >= 0.8 of the real images' R-precision.
* **The asked skin tone on held-out (figure, tone) pairs**: every ``heldout`` name (the figure and the tone
  are each seen in training, never together), ``--samples`` samples each, read by the tone reader of
  ``metrics/emoji_tone.py`` (written from OpenMoji's skin-tone palette), beside its reading of the real
  renders. Target: >= 0.9 of samples in the asked tone.

    python benchmarks/emoji_quality.py --config configs/flow/emoji64.yaml [--skip-fit] [--aligner CKPT]

A recipe with a ``latent`` block is trained after its autoencoder (``--vqvae-config``), whose time counts
in the budget. Reports the optimizer steps reached, the training seconds and the machine's load average while training.
Writes benchmarks/results/emoji_flow<size>.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from recipe_run import checkpoint_dir, fit_from_scratch
from scenes_quality import LoadSampler
from torch.utils.data import default_collate

from mmgen_lightning.datamodules.rendered import RENDERED_SPLITS
from mmgen_lightning.metrics.alignment import _aligner_inputs, r_precision
from mmgen_lightning.metrics.emoji_tone import asked_tone_right, tone_correct
from mmgen_lightning.metrics.evaluator import chunk_seed
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.aligner import load_aligner
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
R_PRECISION_SHARE = 0.8  # of the real renders' R-precision
TONE_TARGET = 0.9


@torch.no_grad()
def sample(model, items: list[dict], repeats: int, seed: int, batch_size: int, sampling: dict) -> torch.Tensor:
    """``repeats`` samples of each item's caption, ``N*repeats,3,S,S`` in [-1, 1], item-major."""
    captions = [item for item in items for _ in range(repeats)]
    chunks = []
    for chunk, start in enumerate(range(0, len(captions), batch_size)):
        batch = default_collate(captions[start:start + batch_size])
        with torch.random.fork_rng():
            torch.manual_seed(chunk_seed(seed, chunk, 0))
            chunks.append(model.generate({"text": batch["text"], "text_mask": batch["text_mask"]},
                                         num_samples=batch["text"].shape[0], to="image", **sampling)["image"])
    return torch.cat(chunks).clamp(-1, 1)


@torch.no_grad()
def seen_name_precision(model, aligner, datamodule, names: int, seed: int, batch_size: int, sampling: dict) -> dict:
    """R-precision (pool 100) and mean cosine of one sample per training name, and of the real renders."""
    dataset = datamodule.dataset("train")
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:names]
    items = [{k: v for k, v in dataset[int(i)].items() if not k.startswith("_")} for i in chosen]
    samples = sample(model, items, 1, seed, batch_size, sampling)
    batch = default_collate(items)
    tokenizer = datamodule.tokenizer

    def embed(values: dict, modality: str) -> torch.Tensor:
        return torch.cat([aligner.embed(_aligner_inputs(aligner, {k: v[i:i + 256] for k, v in values.items()},
                                                        modality, tokenizer), modality).cpu()
                          for i in range(0, len(items), 256)])

    text = embed({"text": batch["text"], "text_mask": batch["text_mask"]}, "text")
    generated, real = embed({"image": samples}, "image"), embed({"image": batch["image"]}, "image")
    precision, pool = r_precision(generated, text, seed=seed)
    real_precision, _ = r_precision(real, text, seed=seed)
    return {"names": len(items), "pool": pool, "r_precision": precision, "real_r_precision": real_precision,
            "share_of_real": precision / max(real_precision, 1e-9),
            "alignment": (generated * text).sum(1).mean().item(), "real_alignment": (real * text).sum(1).mean().item()}


@torch.no_grad()
def heldout_tones(model, datamodule, samples: int, seed: int, batch_size: int, sampling: dict) -> dict:
    """Share of samples of every held-out name drawn in the asked tone(s), and of the real renders."""
    dataset = datamodule.dataset("heldout")
    items = [{k: v for k, v in dataset[i].items() if not k.startswith("_")} for i in range(len(dataset))]
    heldout = datamodule.split_of == RENDERED_SPLITS.index("heldout")
    asked = [datamodule.items[i].tones for i in np.flatnonzero(heldout)]
    generated = asked_tone_right(model, datamodule, "heldout", None, samples, batch_size, seed, **sampling)
    real = tone_correct(default_collate(items)["image"], asked)
    return {"names": len(items), "samples_per_name": samples, "asked_tone": generated.float().mean().item(),
            "real_asked_tone": real.float().mean().item(), "per_name": generated.float().mean(1).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/flow/emoji64.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--ckpt", default=None, help="measure this checkpoint (implies --skip-fit)")
    parser.add_argument("--aligner", default=None, help="an Aligner checkpoint trained on the real emoji pairs")
    parser.add_argument("--aligner-config", default="configs/aligner/emoji.yaml",
                        help="trained first (outside the flow's budget) when --aligner is not given")
    parser.add_argument("--vqvae-config", default=None,
                        help="the latent recipe's autoencoder, trained first, inside the budget "
                             "(default: configs/vqvae/emoji<size>.yaml)")
    parser.add_argument("--names", type=int, default=500, help="training names sampled for R-precision")
    parser.add_argument("--samples", type=int, default=4, help="samples per held-out name")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampling", default="{}", help="JSON of sampling knobs overriding the recipe's")
    parser.add_argument("--out", default=None)
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    command = "python benchmarks/emoji_quality.py " + " ".join(sys.argv[1:])
    aligner_path = args.aligner
    if aligner_path is None:
        aligner_config = yaml.safe_load((ROOT / args.aligner_config).read_text())
        fit_from_scratch(args.aligner_config, aligner_config, [])
        aligner_path = ROOT / checkpoint_dir(aligner_config) / "last.ckpt"
    size = config["data"]["init_args"].get("image_size", 64)
    train_seconds, load = {}, None
    if not (args.skip_fit or args.ckpt):
        with LoadSampler() as sampler:
            if (config["model"].get("init_args") or {}).get("latent"):
                vqvae_config_path = args.vqvae_config or f"configs/vqvae/emoji{size}.yaml"
                vqvae_config = yaml.safe_load((ROOT / vqvae_config_path).read_text())
                train_seconds["vqvae"] = fit_from_scratch(vqvae_config_path, vqvae_config, [])
            train_seconds["flow"] = fit_from_scratch(args.config, config, args.fit_args)
        load = sampler.summary()
    ckpt = Path(args.ckpt) if args.ckpt else ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt).eval()
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    aligner = load_aligner(aligner_path).eval()
    sampling = json.loads(args.sampling)
    started = time.perf_counter()
    seen = seen_name_precision(model, aligner, datamodule, args.names, args.seed, args.batch_size, sampling)
    tones = heldout_tones(model, datamodule, args.samples, args.seed, args.batch_size, sampling)
    met = {f"seen-name R-precision >= {R_PRECISION_SHARE} of real": seen["share_of_real"] >= R_PRECISION_SHARE,
           f"held-out pairs in the asked tone >= {TONE_TARGET}": tones["asked_tone"] >= TONE_TARGET}
    result = {"command": command, "config": args.config, "checkpoint": str(ckpt), "aligner": str(aligner_path),
              "max_time": config["trainer"].get("max_time"), "fit_args": args.fit_args,
              "train_seconds_including_startup": train_seconds or None, "optimizer_steps": stored.get("global_step"),
              "epochs": stored.get("epoch"), "load_average_while_training": load,
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread",
              "torch": torch.__version__, "sampling": {**model.config.sampling.to_dict(), **sampling},
              "evaluation_seconds": round(time.perf_counter() - started, 1), "targets_met": met,
              "seen_names": seen, "heldout_tones": {k: v for k, v in tones.items() if k != "per_name"}}
    print(json.dumps({k: result[k] for k in ("optimizer_steps", "seen_names", "heldout_tones", "targets_met")},
                     indent=1))
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"emoji_flow{size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

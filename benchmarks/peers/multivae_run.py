"""The MultiVae side of benchmarks/peers/multivae_compare.py; runs in the peer's own virtualenv
(benchmarks/.peer-venv: torch + multivae, not this package), so it imports only torch, multivae and
the two torch-only layer files it shares with our MultimodalVAE.

    benchmarks/.peer-venv/bin/python benchmarks/peers/multivae_run.py --data DATA.pt --fusion mopoe \
        --steps 400 --out OUT.pt

MultiVae's ``MoPoE``/``MVAE`` get the very networks our MultimodalVAE builds (``ImageEncoder``,
``ImageDecoder``, ``TextEncoder``, ``GRUTextDecoder`` from mmgen_lightning/models/layers, loaded by
file path) and the same likelihoods: Laplace with scale 0.1 for pixels, the GRU's teacher-forced
caption log-likelihood for text. MultiVae decoders see only ``z``, so the text "decoder" hands ``z``
on and the text log-probability function runs the GRU (``recon_log_probs['text']``); the GRU's
parameters live in that decoder, so MultiVae's optimizer trains them. Training is a plain loop over
``model(inputs).loss`` (MultiVae's own trainer adds evaluation and checkpointing around the same step).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
from multivae.data.datasets.base import MultimodalBaseDataset
from multivae.models import MVAE, MoPoE, MoPoEConfig, MVAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

ROOT = Path(__file__).resolve().parents[2]


def load_layer_file(name: str):
    """``mmgen_lightning/models/layers/<name>.py`` without importing the package (it needs Lightning)."""
    spec = importlib.util.spec_from_file_location(f"shared_{name}", ROOT / "mmgen_lightning/models/layers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_layers, text_layers = load_layer_file("image"), load_layer_file("text")


def gaussian(hidden: torch.Tensor) -> ModelOutput:
    mu, logvar = hidden.float().chunk(2, dim=-1)
    return ModelOutput(embedding=mu, log_covariance=logvar.clamp(-12.0, 8.0))  # the clamp our encode() applies


class ImageExpert(BaseEncoder):
    def __init__(self, latent_dim: int, width: int, image_size: int) -> None:
        super().__init__()
        self.net = image_layers.ImageEncoder(1, image_size, 2 * latent_dim, width)

    def forward(self, image: torch.Tensor) -> ModelOutput:
        return gaussian(self.net(image))


class TextExpert(BaseEncoder):
    """``text: long B,2,L``: token ids and the padding mask, packed so MultiVae's dataset can hold them."""

    def __init__(self, latent_dim: int, text_width: int, vocab_size: int, max_length: int) -> None:
        super().__init__()
        self.net = text_layers.TextEncoder(vocab_size, max_length, 2 * latent_dim, text_width // 2)

    def forward(self, text: torch.Tensor) -> ModelOutput:
        return gaussian(self.net(text[:, 0], text[:, 1].bool()))


class ImageDecoderNet(BaseDecoder):
    def __init__(self, latent_dim: int, width: int, image_size: int) -> None:
        super().__init__()
        self.net = image_layers.ImageDecoder(latent_dim, 1, image_size, width)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=self.net(z))


class TextDecoderNet(BaseDecoder):
    """Holds the GRU; its "reconstruction" is ``z`` itself, scored by :meth:`log_prob`."""

    def __init__(self, latent_dim: int, text_width: int, vocab_size: int) -> None:
        super().__init__()
        self.gru = text_layers.GRUTextDecoder(vocab_size, latent_dim, text_width)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=z)

    def log_prob(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.gru.log_likelihood(z, text[:, 0], text[:, 1].bool())


def build(fusion: str, meta: dict) -> torch.nn.Module:
    latent, width, text_width = meta["latent_dim"], meta["width"], meta["text_width"]
    encoders = {"image": ImageExpert(latent, width, meta["image_size"]),
                "text": TextExpert(latent, text_width, meta["vocab_size"], meta["max_text_length"])}
    decoders = {"image": ImageDecoderNet(latent, width, meta["image_size"]),
                "text": TextDecoderNet(latent, text_width, meta["vocab_size"])}
    common = dict(n_modalities=2, latent_dim=latent, decoders_dist={"image": "laplace", "text": "categorical"},
                  decoder_dist_params={"image": {"scale": meta["image_scale"]}})
    if fusion == "mopoe":
        model = MoPoE(MoPoEConfig(**common, beta=1.0), encoders=encoders, decoders=decoders)
    else:  # MVAE with the joint + unimodal sub-sampled ELBOs (Wu & Goodman 2018), no KL warm-up, as ours
        model = MVAE(MVAEConfig(**common, use_subsampling=True, warmup=0, beta=1.0), encoders=encoders,
                     decoders=decoders)
    model.recon_log_probs["text"] = model.decoders["text"].log_prob
    return model


def inputs(split: dict, rows) -> MultimodalBaseDataset:
    return MultimodalBaseDataset(data={"image": split["image"][rows], "text": split["text"][rows]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tensors written by multivae_compare.py")
    parser.add_argument("--fusion", choices=("mopoe", "poe"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data = torch.load(args.data, weights_only=True)
    meta = json.loads(data["meta"])
    train, test = data["train"], data["test"]
    torch.manual_seed(meta["seed"])
    model = build(args.fusion, meta)
    optimizer = torch.optim.AdamW(model.parameters(), lr=meta["lr"])
    batch_size, count = meta["batch_size"], len(train["image"])
    steps_per_epoch = count // batch_size  # shuffled, last partial batch dropped, as our datamodule does
    model.train()
    ends, losses = [], []
    for step in range(args.steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(count)
        rows = order[(step % steps_per_epoch) * batch_size:(step % steps_per_epoch + 1) * batch_size]
        loss = model(inputs(train, rows)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        ends.append(time.perf_counter())
    timed = ends[args.warmup:]
    model.eval()
    torch.manual_seed(meta["seed"])
    with torch.no_grad():
        test_losses = [model(inputs(test, rows)).loss.item() * len(rows)
                       for rows in torch.arange(len(test["image"])).split(256)]
        z_text = model.encode(inputs(test, slice(None)), cond_mod=["text"]).z
        text_to_image = model.decoders["image"](z_text).reconstruction.clamp(-1, 1)
        z_image = model.encode(inputs(test, slice(None)), cond_mod=["image"]).z
        image_to_text = model.decoders["text"].gru.sample(z_image, meta["max_text_length"], meta["bos_id"],
                                                          meta["eos_id"], meta["pad_id"])
    result = {"library": "multivae", "parameters": sum(p.numel() for p in model.parameters()),
              "steps": args.steps, "timed_steps": len(timed) - 1,
              "steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]),
              "final_train_loss_mean_last_20": sum(losses[-20:]) / len(losses[-20:]),
              "test_elbo": -sum(test_losses) / len(test["image"]), "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    assert math.isfinite(result["test_elbo"]), "MultiVae's test ELBO is not finite"
    torch.save({"result": json.dumps(result), "text_to_image": text_to_image, "image_to_text": image_to_text},
               args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

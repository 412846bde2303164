"""The MultiVae side of benchmarks/peers/multivae_compare.py; runs in the peer's own virtualenv
(benchmarks/.peer-venv: torch + multivae, not this package), so it imports only torch, multivae and
the two torch-only layer files it shares with our MultimodalVAE.

    benchmarks/.peer-venv/bin/python benchmarks/peers/multivae_run.py --data DATA.pt --fusion mopoe \
        --steps 400 --out OUT.pt

MultiVae's ``MoPoE``/``MVAE``/``MMVAEPlus`` get the very networks our MultimodalVAE builds (``ImageEncoder``,
``ImageDecoder``, ``TextEncoder``, ``GRUTextDecoder`` from mmgen_lightning/models/layers, loaded by
file path) and the same likelihoods: Laplace with scale 0.1 for pixels, the GRU's teacher-forced
caption log-likelihood for text. MultiVae decoders see only ``z``, so the text "decoder" hands ``z``
on and the text log-probability function runs the GRU (``recon_log_probs['text']``); the GRU's
parameters live in that decoder, so MultiVae's optimizer trains them. For MMVAE+ each encoder's output
is split as ours is (``[mu_z, mu_w], [logvar_z, logvar_w]``) into MultiVae's shared ``embedding`` and private
``style_embedding``, and the decoders read ``[z, w]``; both posteriors and priors are Gaussian
(``prior_and_posterior_dist="normal"``) and ``r(w)`` is fixed at ``N(0, I)``, as in our ``fusion: mmvae_plus``. Training is a plain loop over
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
from multivae.models import MVAE, MMVAEPlus, MMVAEPlusConfig, MoPoE, MoPoEConfig, MVAEConfig
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


def gaussian(hidden: torch.Tensor, latent_dim: int, private_dim: int) -> ModelOutput:
    mu, logvar = hidden.float().chunk(2, dim=-1)
    logvar = logvar.clamp(-12.0, 8.0)  # the clamp our encode() applies
    if not private_dim:
        return ModelOutput(embedding=mu, log_covariance=logvar)
    return ModelOutput(embedding=mu[:, :latent_dim], log_covariance=logvar[:, :latent_dim],
                       style_embedding=mu[:, latent_dim:], style_log_covariance=logvar[:, latent_dim:])


class ImageExpert(BaseEncoder):
    def __init__(self, latent_dim: int, width: int, image_size: int, private_dim: int = 0) -> None:
        super().__init__()
        self.latent_dim, self.private_dim = latent_dim, private_dim
        self.net = image_layers.ImageEncoder(1, image_size, 2 * (latent_dim + private_dim), width)

    def forward(self, image: torch.Tensor) -> ModelOutput:
        return gaussian(self.net(image), self.latent_dim, self.private_dim)


class TextExpert(BaseEncoder):
    """``text: long B,2,L``: token ids and the padding mask, packed so MultiVae's dataset can hold them."""

    def __init__(self, latent_dim: int, text_width: int, vocab_size: int, max_length: int, private_dim: int = 0) -> None:
        super().__init__()
        self.latent_dim, self.private_dim = latent_dim, private_dim
        self.net = text_layers.TextEncoder(vocab_size, max_length, 2 * (latent_dim + private_dim), text_width // 2)

    def forward(self, text: torch.Tensor) -> ModelOutput:
        return gaussian(self.net(text[:, 0], text[:, 1].bool()), self.latent_dim, self.private_dim)


class ImageDecoderNet(BaseDecoder):
    def __init__(self, latent_dim: int, width: int, image_size: int) -> None:
        super().__init__()
        self.net = image_layers.ImageDecoder(latent_dim, 1, image_size, width)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        # MMVAE+ decodes K samples at once: ``K,B,D``
        return ModelOutput(reconstruction=self.net(z.flatten(0, -2)).unflatten(0, z.shape[:-1]))


class TextDecoderNet(BaseDecoder):
    """Holds the GRU; its "reconstruction" is ``z`` itself, scored by :meth:`log_prob`."""

    def __init__(self, latent_dim: int, text_width: int, vocab_size: int) -> None:
        super().__init__()
        self.gru = text_layers.GRUTextDecoder(vocab_size, latent_dim, text_width)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=z)

    def log_prob(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``z: ...,B,D`` (MMVAE+ gives ``K,B,D``) -> ``...,B`` caption log-likelihoods."""
        lead = z.shape[:-1]
        repeat = z[..., 0].numel() // text.shape[0]
        text = text.repeat(repeat, 1, 1)
        return self.gru.log_likelihood(z.reshape(-1, z.shape[-1]), text[:, 0], text[:, 1].bool()).view(lead)


def build(fusion: str, meta: dict) -> torch.nn.Module:
    latent, width, text_width = meta["latent_dim"], meta["width"], meta["text_width"]
    private = meta["private_dim"] if fusion == "mmvae_plus" else 0
    encoders = {"image": ImageExpert(latent, width, meta["image_size"], private),
                "text": TextExpert(latent, text_width, meta["vocab_size"], meta["max_text_length"], private)}
    decoders = {"image": ImageDecoderNet(latent + private, width, meta["image_size"]),
                "text": TextDecoderNet(latent + private, text_width, meta["vocab_size"])}
    common = dict(n_modalities=2, latent_dim=latent, decoders_dist={"image": "laplace", "text": "categorical"},
                  decoder_dist_params={"image": {"scale": meta["image_scale"]}})
    if fusion == "mopoe":
        model = MoPoE(MoPoEConfig(**common, beta=1.0), encoders=encoders, decoders=decoders)
    elif fusion == "mmvae_plus":  # Gaussian posteriors and priors, r(w) = N(0, I) fixed: our mmvae_plus's
        model = MMVAEPlus(MMVAEPlusConfig(**common, K=meta["cross_samples"], prior_and_posterior_dist="normal",
                                          learn_shared_prior=False, learn_modality_prior=False, beta=1.0,
                                          modalities_specific_dim=private), encoders=encoders, decoders=decoders)
    else:  # MVAE with the joint + unimodal sub-sampled ELBOs (Wu & Goodman 2018), no KL warm-up, as ours
        model = MVAE(MVAEConfig(**common, use_subsampling=True, warmup=0, beta=1.0), encoders=encoders,
                     decoders=decoders)
    model.recon_log_probs["text"] = model.decoders["text"].log_prob
    return model


def code(encoded: ModelOutput, target: str) -> torch.Tensor:
    """The target decoder's input: ``z``, or ``[z, w_target]`` where the model has private latents (MMVAE+
    draws ``w_target`` from its prior when the target is not a condition)."""
    private = getattr(encoded, "modalities_z", None)
    return encoded.z if not private else torch.cat([encoded.z, private[target]], dim=-1)


def inputs(split: dict, rows) -> MultimodalBaseDataset:
    return MultimodalBaseDataset(data={"image": split["image"][rows], "text": split["text"][rows]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="tensors written by multivae_compare.py")
    parser.add_argument("--fusion", choices=("mopoe", "poe", "mmvae_plus"), required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--out", required=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks inside every encoder and "
                        "decoder in place (nn.Module.compile, inductor), as our CompileNetworks callback compiles ours")
    args = parser.parse_args()
    data = torch.load(args.data, weights_only=True)
    meta = json.loads(data["meta"])
    train, test = data["train"], data["test"]
    torch.manual_seed(meta["seed"])
    model = build(args.fusion, meta)
    if args.compile:  # the tensor networks inside MultiVae's wrappers: the same classes our CompileNetworks
        # compiles. Compiling a wrapper itself fails: dynamo rebuilds its ModelOutput without the attributes
        # MultiVae reads (AttributeError: 'ModelOutput' object has no attribute 'embedding')
        for networks in (model.encoders, model.decoders):
            for wrapper in networks.values():
                for inner in ("net", "gru"):
                    if hasattr(wrapper, inner):
                        getattr(wrapper, inner).compile()
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
    if args.fusion == "mmvae_plus":  # the DReG objective hooks gradients, so it cannot run under no_grad;
        model.objective = "iwae_looser"  # its value: the same K-sample bound without the gradient weighting
    torch.manual_seed(meta["seed"])
    with torch.no_grad():
        test_losses = [model(inputs(test, rows)).loss.item() * len(rows)
                       for rows in torch.arange(len(test["image"])).split(256)]
        z_text = code(model.encode(inputs(test, slice(None)), cond_mod=["text"]), "image")
        text_to_image = model.decoders["image"](z_text).reconstruction.clamp(-1, 1)
        z_image = code(model.encode(inputs(test, slice(None)), cond_mod=["image"]), "text")
        image_to_text = model.decoders["text"].gru.sample(z_image, meta["max_text_length"], meta["bos_id"],
                                                          meta["eos_id"], meta["pad_id"])
    result = {"library": "multivae", "parameters": sum(p.numel() for p in model.parameters()),
              "steps": args.steps, "timed_steps": len(timed) - 1,
              "steps_per_second": (len(timed) - 1) / (timed[-1] - timed[0]),
              "final_train_loss_mean_last_20": sum(losses[-20:]) / len(losses[-20:]),
              "test_elbo": -sum(test_losses) / len(test["image"]), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "compiled": args.compile}
    assert math.isfinite(result["test_elbo"]), "MultiVae's test ELBO is not finite"
    torch.save({"result": json.dumps(result), "text_to_image": text_to_image, "image_to_text": image_to_text},
               args.out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

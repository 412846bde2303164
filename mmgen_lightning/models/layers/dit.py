"""A diffusion transformer (DiT, Peebles & Xie 2023) over patches, for flow matching.

Pieces, each with one job (as DiT's ``models.py``):

* :class:`TimestepEmbedder`: ``t: B`` in [0, 1] -> ``B,width`` (sinusoids, then an MLP);
* :class:`ConditionTokens`: a condition encoder's tokens ``B,N,width`` + mask, with the
  classifier-free-guidance dropout (``token_drop``) owned here, as DiT's ``LabelEmbedder`` owns it;
* :class:`DiTBlock`: self-attention and MLP modulated by adaLN-zero from ``time + pooled condition``,
  with a cross-attention to the condition tokens between them (PixArt-alpha's layout);
* :class:`DiT`: patchify ``B,C,H,W`` (any ``H, W``: padded up to a multiple of the patch size),
  blocks, and an adaLN-zero output layer that unpatchifies back to ``B,C,H,W``.

Attention is ``F.scaled_dot_product_attention``; a block can keep its cross-attention weights
(:attr:`Attention.keep_weights`), computed the plain way then, for drawing where patches look.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgen_lightning.models.layers.token_encoders import transformer_encoder


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with ``shift, scale: B,D`` broadcast over the tokens of ``x: B,N,D``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """``t: B`` in [0, 1] -> ``B,width``: sinusoids of ``1000 t`` (the scale DiT's frequencies were
    chosen for), then a two-layer MLP."""

    def __init__(self, width: int, frequencies: int = 128) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequencies // 2
        rates = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = 1000 * t.float()[:, None] * rates[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], -1).to(self.mlp[0].weight.dtype))


class TextTokenEncoder(nn.Module):
    """``text: long B,L`` + ``text_mask: bool B,L`` -> tokens ``B,L,width`` (one per word piece):
    embeddings, learned positions, pre-norm transformer layers (word order: "on the left moving up")."""

    num_prefix_tokens = 0

    def __init__(self, vocab_size: int, max_length: int, width: int, num_layers: int = 2, num_heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, max_length, width))
        self.transformer = transformer_encoder(width, num_layers, num_heads, 0.0) if num_layers else None
        self.norm = nn.LayerNorm(width)
        self.grid = (max_length,)

    def forward(self, text: Tensor, text_mask: Tensor) -> Tensor:
        hidden = self.embed(text) + self.position[:, : text.shape[1]]
        if self.transformer is not None:
            hidden = self.transformer(hidden, src_key_padding_mask=~text_mask)
        return self.norm(hidden)


class ConditionTokens(nn.Module):
    """A condition -> ``(tokens B,N,width, mask bool B,N, pooled B,width)``, with condition dropout.

    ``encode(conditions) -> (tokens, mask)`` is whatever encoder reads this modality. During
    training each sample's condition is replaced, with probability ``drop_prob``, by a learned null
    condition (one null token); ``force_drop: bool B`` does the same on demand, which is how
    classifier-free guidance asks for the unconditional velocity. The pooled vector (masked mean of
    the tokens, projected) joins the time embedding in every block's adaLN.
    """

    def __init__(self, encode: nn.Module, width: int, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {drop_prob}")
        self.encode = encode
        self.drop_prob = drop_prob
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pool = nn.Linear(width, width)

    def token_drop(self, tokens: Tensor, mask: Tensor, force_drop: Tensor | None) -> tuple[Tensor, Tensor]:
        """Replace the dropped samples' tokens by the null token (first position, the rest masked)."""
        if force_drop is None:
            if not (self.training and self.drop_prob > 0):
                return tokens, mask
            force_drop = torch.rand(tokens.shape[0], device=tokens.device) < self.drop_prob
        null_tokens = self.null.to(tokens.dtype).expand(tokens.shape[0], tokens.shape[1], -1)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        drop = force_drop.view(-1, 1)
        return torch.where(drop.unsqueeze(-1), null_tokens, tokens), torch.where(drop, null_mask, mask)

    def forward(self, conditions: dict[str, Tensor], force_drop: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        tokens, mask = self.encode(conditions)
        tokens, mask = self.token_drop(tokens, mask, force_drop)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return tokens, mask, self.pool(pooled)


class Attention(nn.Module):
    """Multi-head attention of ``x: B,N,D`` over ``context: B,M,D`` (itself when None), keys masked
    by ``context_mask: bool B,M`` (True = attend)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.keep_weights = False
        self.weights: Tensor | None = None  # B,heads,N,M when keep_weights

    def forward(self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        heads = lambda y: y.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731 - B,H,N,d
        query = heads(self.query(x))
        key, value = (heads(y) for y in self.key_value(context).chunk(2, -1))
        mask = None if context_mask is None else context_mask[:, None, None, :]
        if self.keep_weights:  # fused kernels never materialise the weights
            scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            self.weights = scores.float().softmax(-1)
            attended = self.weights.to(value.dtype) @ value
        else:
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.out(attended.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    """``x: B,N,D`` -> ``B,N,D``: adaLN-zero self-attention, cross-attention to the condition tokens
    (when built with it), adaLN-zero MLP. The modulation starts at zero, so each block starts as the
    identity (DiT's adaLN-zero)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0, cross_attention: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attention = Attention(width, num_heads)
        self.cross_norm = nn.LayerNorm(width, eps=1e-6) if cross_attention else None
        self.cross_attention = Attention(width, num_heads) if cross_attention else None
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, -1)
        x = x + gate1.unsqueeze(1) * self.attention(modulate(self.norm1(x), shift1, scale1))
        if self.cross_attention is not None and context is not None:
            x = x + self.cross_attention(self.cross_norm(x), context, context_mask)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Velocity network ``v(x_t, t, condition)``: ``x: B,C,H,W`` -> ``B,C,H,W``.

    Args:
        channels: input/output channels ``C``.
        size: ``(H, W)``; padded up to multiples of ``patch_size`` inside, cropped back on the way out.
        patch_size: one token per ``p x p`` pixels.
        width: token size ``D``.
        depth: blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size over ``D``.
        cross_attention: give every block a cross-attention to condition tokens.
        stem_channels: above 0, a 3x3 convolution with this many channels at full resolution comes before
            the patch embedding (early convolutions help small transformers see edges, Xiao et al. 2021).
        head_channels: above 0, the output layer unpatchifies this many channels per pixel and a 3x3
            convolution turns them into the output, so edges stay continuous across patch borders.
        step_input: also read a step size ``d: B`` (shortcut models, Frans et al. 2024), embedded as the
            time is and added to it; its embedding starts at zero, so the network starts as without it.
    """

    def __init__(self, channels: int, size: tuple[int, int], patch_size: int = 4, width: int = 128, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0, cross_attention: bool = True, stem_channels: int = 0,
                 head_channels: int = 0, step_input: bool = False) -> None:
        super().__init__()
        self.channels, self.size, self.patch_size = channels, tuple(size), patch_size
        self.grid = tuple(math.ceil(s / patch_size) for s in self.size)  # (h, w) tokens
        if stem_channels:
            self.patch = nn.Sequential(nn.Conv2d(channels, stem_channels, 3, padding=1), nn.SiLU(),
                                       nn.Conv2d(stem_channels, width, patch_size, stride=patch_size))
        else:
            self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.out_channels = head_channels or channels
        self.register_buffer("position", sincos_2d(width, self.grid), persistent=False)
        self.time = TimestepEmbedder(width)
        self.step_size = TimestepEmbedder(width) if step_input else None
        self.blocks = nn.ModuleList(DiTBlock(width, num_heads, mlp_ratio, cross_attention) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final = nn.Linear(width, patch_size * patch_size * self.out_channels)
        self.head = nn.Conv2d(head_channels, channels, 3, padding=1) if head_channels else None
        zeroed = [self.final_modulation[-1], self.head if self.head is not None else self.final]
        if self.step_size is not None:
            zeroed.append(self.step_size.mlp[-1])
        for layer in zeroed:  # the network starts by predicting v = 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, pooled: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, step: Tensor | None = None) -> Tensor:
        """``x: B,C,H,W``, ``t: B`` in [0, 1], ``pooled: B,D`` (added to the time embedding),
        ``context: B,M,D`` + ``context_mask: bool B,M`` for cross-attention, ``step: B`` the step size
        (a network built with ``step_input``; None: 0)."""
        height, width = self.size
        p, (rows, cols) = self.patch_size, self.grid
        x = F.pad(x, (0, cols * p - width, 0, rows * p - height))
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position.to(x.dtype)  # B,h*w,D row-major
        c = self.time(t)
        if self.step_size is not None:
            c = c + self.step_size(torch.zeros_like(t) if step is None else step)
        if pooled is not None:
            c = c + pooled
        for block in self.blocks:
            tokens = block(tokens, c, context, context_mask)
        shift, scale = self.final_modulation(c).chunk(2, -1)
        out = self.final(modulate(self.final_norm(tokens), shift, scale))  # B,h*w,p*p*C'
        out = out.view(-1, rows, cols, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        out = out.reshape(-1, self.out_channels, rows * p, cols * p)
        if self.head is not None:
            out = self.head(out)
        return out[..., :height, :width]

    def keep_cross_attention(self, keep: bool) -> None:
        """Make every cross-attention keep (or stop keeping) its weights."""
        for block in self.blocks:
            if block.cross_attention is not None:
                block.cross_attention.keep_weights = keep
                block.cross_attention.weights = None


def sincos_2d(width: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sine-cosine positions ``1,h*w,width`` (half the channels for rows, half for columns)."""
    quarter = width // 4
    rates = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float32),
                                torch.arange(grid[1], dtype=torch.float32), indexing="ij")
    parts = [f(axis.flatten()[:, None] * rates[None]) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    embedding = torch.cat(parts, -1)
    return F.pad(embedding, (0, width - embedding.shape[-1])).unsqueeze(0)

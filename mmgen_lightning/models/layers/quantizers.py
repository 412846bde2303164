"""Quantizers that turn encoder outputs ``B,D,*grid`` into discrete codes ``long B,*grid``.

- :class:`VectorQuantizer`: a learned codebook of ``K`` vectors updated by exponential moving
  averages of the encoder outputs assigned to each code (van den Oord et al. 2017, appendix A.1;
  Razavi et al. 2019), with dead-code restarts (codes whose running count falls below a threshold
  jump to a random encoder output of the current batch, as in Dhariwal et al. 2020's Jukebox).
- :class:`FiniteScalarQuantizer` (FSQ, Mentzer et al. 2023): each of ``d`` channels is bounded and
  rounded to ``L_i`` levels; the implicit codebook is the grid of ``prod(L_i)`` points, nothing is
  learned and no code can die.

Both pass gradients straight through (``z + sg(q - z)``) and return the same :class:`Quantized`.

Written here rather than taken from ``vector-quantize-pytorch``: the EMA update, the restart and the
DDP reduction are about sixty lines, the tests check their maths directly, and the package would add
``einops``/``einx`` to the dependencies for it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmgen_lightning.losses import commitment_loss

QUANTIZERS = ("vq", "fsq")


class Quantized(NamedTuple):
    """``quantized: B,D,*grid`` (straight-through), ``codes: long B,*grid``, ``commitment``: scalar
    (0 for FSQ)."""

    quantized: Tensor
    codes: Tensor
    commitment: Tensor


def _channels_last(z: Tensor) -> Tensor:
    """``B,D,*grid`` -> ``B*prod(grid),D``."""
    return z.movedim(1, -1).reshape(-1, z.shape[1])


def _all_reduce(tensor: Tensor) -> Tensor:
    """Sum over processes under DDP (every process then makes the same codebook update)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, src=0)
    return tensor


class VectorQuantizer(nn.Module):
    """Nearest-code quantizer with an EMA codebook.

    Args:
        num_codes: codebook size ``K``.
        dim: code size ``D`` (the encoder's output channels).
        decay: EMA decay ``gamma`` of the running counts and sums.
        eps: Laplace smoothing of the running counts, so no code divides by zero.
        dead_code_threshold: a code whose running count (vectors per step) drops below this is restarted
            at a random encoder output of the batch; 0 turns restarts off.
    """

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_code_threshold: float = 1.0) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"num_codes must be >= 2 and dim >= 1, got {num_codes} and {dim}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", torch.randn(num_codes, dim))
        self.register_buffer("cluster_size", torch.ones(num_codes))  # running count N_k
        self.register_buffer("embed_sum", self.codebook.clone())  # running sum m_k, e_k = m_k / N_k
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))  # restarted codes so far

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean) of each row of ``flat: N,D``."""
        codebook = self.codebook.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
        return distances.argmin(1)

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes: long B,*grid`` -> their vectors ``B,D,*grid``."""
        return self.codebook[codes].movedim(-1, 1)

    def forward(self, z: Tensor) -> Quantized:
        """``z: B,D,*grid`` -> :class:`Quantized`; in training mode the codebook is updated first."""
        flat = _channels_last(z.float())  # distances in float32 even under bf16 autocast
        if self.training:
            self.update(flat.detach())
        codes = self.nearest(flat)
        quantized = self.lookup(codes.view(z.shape[0], *z.shape[2:])).to(z.dtype)
        return Quantized(z + (quantized - z).detach(), codes.view(z.shape[0], *z.shape[2:]),
                         commitment_loss(z, quantized))

    @torch.no_grad()
    def update(self, flat: Tensor) -> None:
        """One EMA step on the encoder outputs ``flat: N,D``:
        ``N_k <- g N_k + (1-g) n_k``, ``m_k <- g m_k + (1-g) sum_{z -> k} z``,
        ``e_k = m_k / N~_k`` with ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``; then dead-code restarts."""
        if not bool(self.initialized):  # start from the data: every code begins where encoder outputs are
            self.codebook.copy_(self.sample_rows(flat, self.num_codes))
            self.embed_sum.copy_(self.codebook)
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
        codes = self.nearest(flat)
        one_hot = torch.zeros(flat.shape[0], self.num_codes, device=flat.device, dtype=flat.dtype)
        one_hot.scatter_(1, codes[:, None], 1.0)
        counts = _all_reduce(one_hot.sum(0))
        sums = _all_reduce(one_hot.T @ flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        if self.dead_code_threshold > 0:
            self.restart_dead_codes(flat)

    @torch.no_grad()
    def restart_dead_codes(self, flat: Tensor) -> None:
        """Move every code whose running count is below ``dead_code_threshold`` onto a random row of
        ``flat`` (chosen on process 0 and broadcast, so all processes keep one codebook)."""
        dead = self.cluster_size < self.dead_code_threshold
        count = int(dead.sum())
        if count == 0:
            return
        replacements = _broadcast(self.sample_rows(flat, count).contiguous())
        self.codebook[dead] = replacements
        self.embed_sum[dead] = replacements * self.dead_code_threshold
        self.cluster_size[dead] = self.dead_code_threshold
        self.restarts.add_(count)

    @staticmethod
    def sample_rows(flat: Tensor, count: int) -> Tensor:
        """``count`` rows of ``flat``, without replacement while there are enough."""
        if flat.shape[0] >= count:
            return flat[torch.randperm(flat.shape[0], device=flat.device)[:count]]
        return flat[torch.randint(flat.shape[0], (count,), device=flat.device)]


class FiniteScalarQuantizer(nn.Module):
    """FSQ (Mentzer et al. 2023): channel ``i`` is bounded to ``L_i`` levels by
    ``tanh(z + shift) * h - offset`` (``h = (L_i - 1)/2``, ``offset = 1/2`` for even ``L_i``) and rounded;
    the code is the mixed-radix number of the levels. Quantized values are scaled to [-1, 1].

    Args:
        levels: levels per channel, e.g. ``[8, 5, 5, 5]`` (1000 codes, ``dim = 4``).
    """

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"fsq_levels: give at least one level count, each >= 2, got {levels}")
        levels_tensor = torch.tensor(levels, dtype=torch.long)
        self.register_buffer("levels", levels_tensor, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.tensor([1] + list(levels[:-1])), 0), persistent=False)
        self.num_codes, self.dim = int(math.prod(levels)), len(levels)

    def bound(self, z: Tensor) -> Tensor:
        """``B,D,*grid`` (channels last inside) -> values in ``(-L/2, L/2)`` that round to ``L`` levels."""
        levels = self.levels.float()
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: Tensor) -> Quantized:
        last = z.float().movedim(1, -1)  # B,*grid,D
        bounded = self.bound(last)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        half_width = (self.levels // 2).float()
        codes = ((torch.round(bounded).long() + self.levels // 2) * self.basis).sum(-1)
        quantized = (rounded / half_width).movedim(-1, 1).to(z.dtype)
        return Quantized(quantized, codes, torch.zeros((), device=z.device))

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes: long B,*grid`` -> ``B,D,*grid`` in [-1, 1]."""
        digits = (codes[..., None] // self.basis) % self.levels
        half_width = self.levels // 2
        return ((digits - half_width).float() / half_width.float()).movedim(-1, 1)

"""The network that models one token stream of text and codes, laid out by
:class:`~mmgen_lightning.tokenizer.TokenLayout`: :class:`StreamEmbedding`, then ``transformers``' GPT-2
block stack, then a linear head over the whole vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2Model

from mmgen_lightning.tokenizer import CODE, TEXT, TokenLayout


class StreamEmbedding(nn.Module):
    """``ids: long B,S'`` (slots ``offset..offset+S'`` of the stream) -> ``B,S',width``: token +
    role (modality) + position within the segment: a learned 1-D table for text, row + column
    tables (2-D) for codes. Owns condition dropout for classifier-free guidance (as DiT's label
    embedder does): :meth:`drop_condition` swaps a row's whole condition for ``[NULL]`` tokens.

    Args:
        layout: the stream layout.
        width: embedding size.
        condition_dropout: probability that a training row loses its condition.
    """

    def __init__(self, layout: TokenLayout, width: int, condition_dropout: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        self.layout, self.condition_dropout = layout, condition_dropout
        self.token = nn.Embedding(layout.vocab_size, width)
        self.role = nn.Embedding(3, width)
        self.text_position = nn.Embedding(layout.text_length, width)
        self.row = nn.Embedding(layout.grid[0], width)
        self.column = nn.Embedding(layout.grid[1], width)
        for table in (self.token, self.role, self.text_position, self.row, self.column):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, ids: Tensor, codes_first: Tensor, offset: int = 0) -> Tensor:
        role, index = self.layout.roles(codes_first)
        role, index = role[:, offset:offset + ids.shape[1]], index[:, offset:offset + ids.shape[1]]
        columns = self.layout.grid[1]
        text = self.text_position(index.clamp_max(self.layout.text_length - 1))
        code = self.row((index // columns).clamp_max(self.layout.grid[0] - 1)) + self.column(index % columns)
        position = torch.where((role == TEXT)[..., None], text, torch.where((role == CODE)[..., None], code, 0.0))
        return self.token(ids) + self.role(role) + position

    def drop_condition(self, ids: Tensor, codes_first: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Replace the condition of some rows by ``[NULL]``: of the rows in ``drop`` (``bool B``), or of
        rows drawn with probability ``condition_dropout`` in training. Returns ``(ids, dropped: bool B)``."""
        if drop is None:
            drop = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            if self.training and self.condition_dropout > 0:
                drop = torch.rand(ids.shape[0], device=ids.device) < self.condition_dropout
        slots = self.layout.condition_slots(codes_first)[:, : ids.shape[1]] & drop[:, None]
        return ids.masked_fill(slots, self.layout.null_id), drop


class StreamTransformer(nn.Module):
    """``ids: long B,S'`` (slots ``offset..offset+S'`` of the stream, ``offset`` = what ``cache`` holds) ->
    logits ``B,S',vocab`` and the updated cache (``None`` when none was given).

    The blocks are ``transformers``' GPT-2 stack (random weights from a config, nothing downloaded) fed
    ``inputs_embeds`` from :class:`StreamEmbedding`; its ``DynamicCache`` serves sampling.

    Args:
        layout: the stream layout.
        width: embedding size of the blocks.
        num_layers: GPT-2 blocks.
        num_heads: attention heads.
        dropout: dropout of embeddings, attention and residuals.
        condition_dropout: probability that a training row loses its condition (:class:`StreamEmbedding`).
    """

    def __init__(self, layout: TokenLayout, width: int, num_layers: int, num_heads: int, dropout: float = 0.0,
                 condition_dropout: float = 0.1) -> None:
        super().__init__()
        self.layout = layout
        self.embedding = StreamEmbedding(layout, width, condition_dropout)
        self.blocks = GPT2Model(GPT2Config(
            vocab_size=1, n_positions=layout.length, n_embd=width, n_layer=num_layers, n_head=num_heads,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
            bos_token_id=None, eos_token_id=None))  # tokens come in as inputs_embeds; its 1-row wte is unused
        self.head = nn.Linear(width, layout.vocab_size, bias=False)

    def forward(self, ids: Tensor, codes_first: Tensor,
                cache: DynamicCache | None = None) -> tuple[Tensor, DynamicCache | None]:
        offset = cache.get_seq_length() if cache is not None else 0
        out = self.blocks(inputs_embeds=self.embedding(ids, codes_first, offset), cache=cache,
                          use_cache=cache is not None)
        return self.head(out.last_hidden_state), out.cache if cache is not None else None

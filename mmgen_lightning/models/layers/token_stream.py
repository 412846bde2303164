"""One token stream for text and a tokenized modality (image codes, or audio codes), in either order:

    text first:  [BOS] text[1:] [SEP-image] codes [EOS]      (text -> image)
    codes first: [BOS] codes [SEP-text] text[1:] [EOS]       (image -> text)

``text`` is the datamodule's padded caption ``[BOS] words [EOS] [PAD]...`` of length ``L``, so its
own ``[EOS]`` ends the words and its ``[PAD]`` fill the fixed slots; ``codes`` are ``N = rows * cols``
VQ codes in row-major order. Both orders have ``L + N + 2`` slots, so one batch mixes them row by row
and every sequence has static shapes (no padding masks: the pads are ordinary, predictable inputs).

Vocabulary: text ids ``[0, V)``, then code ``k`` as ``V + k``, then ``[SEP-image]``, ``[SEP-text]`` and
``[NULL]``, the id that replaces a dropped condition (classifier-free guidance). ``[BOS]``/``[EOS]``
are the text tokenizer's.

:class:`StreamTransformer` is the network that models such a stream: :class:`StreamEmbedding`, then
``transformers``' GPT-2 block stack, then a linear head over the whole vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import DynamicCache, GPT2Config, GPT2Model

from mmgen_lightning.tokenizer import BOS_ID, EOS_ID, PAD_ID

#: the role of a slot, the ``modality`` embedding index
SPECIAL, TEXT, CODE = 0, 1, 2


class TokenLayout:
    """Builds and splits streams; knows which slot holds what.

    Args:
        text_vocab_size: ``V``, the caption tokenizer's vocabulary size.
        num_codes: ``K`` codes of the stage-1 tokenizer.
        text_length: ``L``, padded caption length (``[BOS]`` and ``[EOS]`` included).
        grid: ``(rows, cols)`` of the codes of one sample.
        bos_id, eos_id, pad_id: the caption tokenizer's special ids.
    """

    def __init__(self, text_vocab_size: int, num_codes: int, text_length: int, grid: tuple[int, int],
                 bos_id: int = BOS_ID, eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> None:
        self.text_vocab_size, self.num_codes, self.text_length = text_vocab_size, num_codes, text_length
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_codes_per_sample = self.grid[0] * self.grid[1]
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.sep_image_id = text_vocab_size + num_codes
        self.sep_text_id = self.sep_image_id + 1
        self.null_id = self.sep_image_id + 2
        self.vocab_size = self.null_id + 1
        self.length = text_length + self.num_codes_per_sample + 2

    # --- slots ---------------------------------------------------------------------------------
    def text_slots(self, codes_first: bool) -> slice:
        """Slots of ``text[1:]`` (``L - 1`` of them)."""
        start = self.num_codes_per_sample + 2 if codes_first else 1
        return slice(start, start + self.text_length - 1)

    def code_slots(self, codes_first: bool) -> slice:
        """Slots of the ``N`` codes."""
        start = 1 if codes_first else self.text_length + 1
        return slice(start, start + self.num_codes_per_sample)

    def roles(self, codes_first: Tensor) -> tuple[Tensor, Tensor]:
        """Per slot of each row (``codes_first: bool B``): the role ``long B,S`` (``SPECIAL``/``TEXT``/
        ``CODE``) and the index within its segment ``long B,S`` (text position ``1..L-1``, code index
        ``0..N-1``, 0 for special slots)."""
        rows = []
        for order in (False, True):
            role = torch.full((self.length,), SPECIAL, dtype=torch.long)
            index = torch.zeros(self.length, dtype=torch.long)
            text, code = self.text_slots(order), self.code_slots(order)
            role[text], index[text] = TEXT, torch.arange(1, self.text_length)
            role[code], index[code] = CODE, torch.arange(self.num_codes_per_sample)
            rows.append((role, index))
        device = codes_first.device
        choice = codes_first.long()[:, None]
        role = torch.stack([rows[0][0], rows[1][0]]).to(device)[choice.squeeze(1)]
        index = torch.stack([rows[0][1], rows[1][1]]).to(device)[choice.squeeze(1)]
        return role, index

    def condition_slots(self, codes_first: Tensor) -> Tensor:
        """``bool B,S``: the slots of each row's condition, the segment before the separator."""
        role, _ = self.roles(codes_first)
        return torch.where(codes_first[:, None], role == CODE, role == TEXT)

    # --- streams -------------------------------------------------------------------------------
    def build(self, text: Tensor, codes: Tensor, codes_first: Tensor) -> Tensor:
        """``text: long B,L`` + ``codes: long B,N`` + ``codes_first: bool B`` -> ``ids: long B,S``."""
        batch = text.shape[0]
        ids = torch.empty(batch, self.length, dtype=torch.long, device=text.device)
        for order in (False, True):
            rows = codes_first == order
            if not rows.any():
                continue
            stream = torch.empty(int(rows.sum()), self.length, dtype=torch.long, device=text.device)
            stream[:, 0] = self.bos_id
            stream[:, self.text_slots(order)] = text[rows, 1:]
            stream[:, self.code_slots(order)] = codes[rows] + self.text_vocab_size
            separator = self.code_slots(order).start - 1 if not order else self.text_slots(order).start - 1
            stream[:, separator] = self.sep_image_id if not order else self.sep_text_id
            stream[:, -1] = self.eos_id
            ids[rows] = stream
        return ids

    def split(self, ids: Tensor, codes_first: Tensor) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`build`: ``ids: long B,S`` -> ``text: long B,L`` (``[BOS]`` first), ``codes: long B,N``."""
        text = torch.empty(ids.shape[0], self.text_length, dtype=torch.long, device=ids.device)
        codes = torch.empty(ids.shape[0], self.num_codes_per_sample, dtype=torch.long, device=ids.device)
        text[:, 0] = self.bos_id
        for order in (False, True):
            rows = codes_first == order
            text[rows, 1:] = ids[rows][:, self.text_slots(order)]
            codes[rows] = ids[rows][:, self.code_slots(order)] - self.text_vocab_size
        return text, codes

    def prefix(self, condition: Tensor, codes_first: bool) -> Tensor:
        """The stream up to and including the separator, for sampling the other segment:
        ``condition`` is ``text: long B,L`` (codes follow) or ``codes: long B,N`` (text follows)."""
        batch = condition.shape[0]
        start = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=condition.device)
        if codes_first:
            body, separator = condition + self.text_vocab_size, self.sep_text_id
        else:
            body, separator = condition[:, 1:], self.sep_image_id
        return torch.cat([start, body, torch.full_like(start, separator)], dim=1)


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

"""Caption tokenizer on HF ``tokenizers``, with the padding and masks of the batch contract.

Sequences are ``[BOS] tokens [EOS] [PAD]...`` padded to a fixed ``max_length`` so that every
family sees static shapes. The tokenizer serialises to one JSON string, which models store in
their checkpoints so that a checkpoint alone can decode text.

:class:`TokenLayout` lays captions and VQ codes out as one token stream, in either order (the
``TokenTransformer``'s input; its network is ``models/layers/token_stream.py``):

    text first:  [BOS] text[1:] [SEP-image] codes [EOS]      (text -> image)
    codes first: [BOS] codes [SEP-text] text[1:] [EOS]       (image -> text)

``text`` is the datamodule's padded caption ``[BOS] words [EOS] [PAD]...`` of length ``L``, so its
own ``[EOS]`` ends the words and its ``[PAD]`` fill the fixed slots; ``codes`` are ``N = rows * cols``
VQ codes in row-major order. Both orders have ``L + N + 2`` slots, so one batch mixes them row by row
and every sequence has static shapes (no padding masks: the pads are ordinary, predictable inputs).

Vocabulary: text ids ``[0, V)``, then code ``k`` as ``V + k``, then ``[SEP-image]``, ``[SEP-text]`` and
``[NULL]``, the id that replaces a dropped condition (classifier-free guidance). ``[BOS]``/``[EOS]``
are the text tokenizer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: the ids of ``SPECIAL_TOKENS``, the same in every vocabulary (the first four entries); the one
#: place models, layers and callbacks read them from
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
KINDS = ("word", "bpe")

__all__ = ["BOS", "BOS_ID", "CODE", "EOS", "EOS_ID", "KINDS", "PAD", "PAD_ID", "SPECIAL", "SPECIAL_TOKENS", "TEXT",
           "UNK", "UNK_ID", "CaptionTokenizer", "TokenLayout"]


class CaptionTokenizer:
    """Text <-> ``(text, text_mask)`` tensors.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose vocabulary starts with ``SPECIAL_TOKENS``.
        max_length: padded length ``L`` of every sequence, ``[BOS]`` and ``[EOS]`` included.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        for index, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != index:
                raise ValueError(f"tokenizer: special token {token} must have id {index}")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (BOS, one token, EOS), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @classmethod
    def train(cls, corpus: Iterable[str], max_length: int = 24, kind: str = "word",
              vocab_size: int = 4000) -> "CaptionTokenizer":
        """Train on captions: ``word`` keeps every word (closed vocabularies such as Shapes and
        Digits captions), ``bpe`` learns sub-words up to ``vocab_size`` (a user's open captions)."""
        corpus = [c for c in corpus]
        if not corpus:
            raise ValueError("tokenizer corpus: the caption list is empty; give at least one caption")
        if kind == "word":
            tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
            trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
        elif kind == "bpe":
            # the end-of-word suffix is what lets the decoder put the spaces back between words
            tokenizer = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
            trainer = trainers.BpeTrainer(special_tokens=list(SPECIAL_TOKENS), vocab_size=vocab_size,
                                          end_of_word_suffix="</w>")
            tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
        else:
            raise ValueError(f"tokenizer kind: unknown {kind!r}; allowed: {', '.join(KINDS)}")
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        return cls(tokenizer, max_length)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 24) -> "CaptionTokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)), max_length)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, data: str, max_length: int) -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(data), max_length)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str] | str) -> dict[str, Tensor]:
        """Captions -> ``{"text": long B,L, "text_mask": bool B,L}``; too long captions are cut
        (keeping ``[EOS]``), empty ones raise."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, (text, encoding) in enumerate(zip(texts, self.tokenizer.encode_batch(texts))):
            if not encoding.ids:
                raise ValueError(f"caption {row} is empty: {text!r}")
            tokens = [self.bos_id, *encoding.ids[: self.max_length - 2], self.eos_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return {"text": ids, "text_mask": ids != self.pad_id}

    def problems(self, text: str) -> list[str]:
        """What the model will not read of ``text``, as sentences for a warning: the part cut off past
        ``max_length`` (with both lengths) and the words the vocabulary lacks (read as ``[UNK]``)."""
        encoding = self.tokenizer.encode(text)
        found = []
        room = self.max_length - 2  # [BOS] and [EOS]
        if len(encoding.ids) > room:
            found.append(f"the caption is {len(encoding.ids)} tokens long, but the model reads at most {room} "
                         f"(max_text_length {self.max_length} with [BOS] and [EOS]): it is cut after "
                         f"{text[:encoding.offsets[room - 1][1]]!r}")
        unknown = [text[start:end] for token, (start, end) in zip(encoding.tokens, encoding.offsets) if token == UNK]
        if unknown:
            words = ", ".join(repr(word) for word in dict.fromkeys(unknown[:10]))
            found.append(f"{len(unknown)} unknown token(s) ({words}) are read as {UNK}: the vocabulary the model "
                         f"was trained with ({self.vocab_size} tokens) lacks them")
        return found

    def decode(self, ids: Tensor) -> list[str]:
        """``long B,L`` -> captions; stops at the first ``[EOS]``, drops special tokens."""
        texts = []
        for row in ids.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            kept = [t for t in row if t >= self.unk_id]  # drops PAD/BOS, keeps UNK visible as '?'
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=False).replace(UNK, "?").strip())
        return texts


# --- one stream of text and codes ------------------------------------------------------------
#: the role of a slot, the ``modality`` embedding index
SPECIAL, TEXT, CODE = 0, 1, 2


class TokenLayout:
    """Builds and splits streams; knows which slot holds what.

    Args:
        text_vocab_size: ``V``, the caption tokenizer's vocabulary size.
        num_codes: ``K`` codes of the stage-1 tokenizer.
        text_length: ``L``, padded caption length (``[BOS]`` and ``[EOS]`` included).
        grid: ``(rows, cols)`` of the codes of one sample.
        bos_id: the caption tokenizer's ``[BOS]`` id.
        eos_id: its ``[EOS]`` id.
        pad_id: its ``[PAD]`` id.
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

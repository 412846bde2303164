"""Caption tokenizer on HF ``tokenizers``, with the padding and masks of the batch contract.

Sequences are ``[BOS] tokens [EOS] [PAD]...`` padded to a fixed ``max_length`` so that every
family sees static shapes. The tokenizer serialises to one JSON string, which models store in
their checkpoints so that a checkpoint alone can decode text.
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

__all__ = ["BOS", "BOS_ID", "EOS", "EOS_ID", "KINDS", "PAD", "PAD_ID", "SPECIAL_TOKENS", "UNK", "UNK_ID",
           "CaptionTokenizer"]


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

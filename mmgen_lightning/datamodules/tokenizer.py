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
KINDS = ("word", "bpe")


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
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

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

    def decode(self, ids: Tensor) -> list[str]:
        """``long B,L`` -> captions; stops at the first ``[EOS]``, drops special tokens."""
        texts = []
        for row in ids.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            kept = [t for t in row if t >= self.unk_id]  # drops PAD/BOS, keeps UNK visible as '?'
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=False).replace(UNK, "?").strip())
        return texts

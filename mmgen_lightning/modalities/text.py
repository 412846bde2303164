"""``text: long B,L`` token ids, with ``text_mask: bool B,L`` beside them."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor

from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import FileFormat
from mmgen_lightning.modalities.tensorboard import TensorBoardView


class TextModality(Modality, FileFormat, TensorBoardView):
    """``text: long B,L`` token ids ``[BOS] ... [EOS] [PAD]...`` of the data's tokenizer, with
    ``text_mask: bool B,L`` (True on real tokens) beside it in the batch."""

    name, ndim, floating = "text", 2, False
    extension, columns, noun = ".txt", ("text", "caption"), "captions"
    mask_key: ClassVar[str] = "text_mask"

    def keys(self) -> list[str]:
        return [self.name, self.mask_key]

    def conform(self, values, spec, tokenizer=None, to_tokenizer=None, antialias=True):
        """Captions re-tokenised by ``to_tokenizer`` (decoded with ``tokenizer``); as they are without both."""
        if tokenizer is None or to_tokenizer is None:
            return super().conform(values, spec)
        return to_tokenizer.encode(tokenizer.decode(values[self.name].cpu()))

    def scored_dimensions(self, batch, *, spectrogram_dims=None):
        """Real tokens after ``[BOS]`` (the ones a likelihood predicts)."""
        return batch[self.mask_key][:, 1:].sum(1).double()

    def to_data(self, values, spec=None, tokenizer=None):
        if tokenizer is None:
            raise ValueError("text: decoding token ids needs the tokenizer (the checkpoint carries it)")
        return tokenizer.decode(values.detach().long().cpu())

    # --- files --------------------------------------------------------------------------------------
    def parse_cell(self, value):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"the caption is empty: {value!r}")
        return value

    def to_shard(self, item, row):
        """The caption itself, so shards can be read with another tokenizer."""
        return row[self.name]

    def from_shard(self, stored, tokenizer=None):
        encoded = tokenizer.encode(stored)
        return {key: encoded[key][0] for key in self.keys()}

    def write(self, value, path, spec=None, tokenizer=None):
        """``value``: the caption, or its token ids ``L`` (decoded with ``tokenizer``)."""
        if isinstance(value, Tensor):
            value = self.to_data(value[None], tokenizer=tokenizer)[0]
        Path(path).write_text(value + "\n", encoding="utf-8")
        return {"text": value}

    # --- drawing ------------------------------------------------------------------------------------
    def log(self, writer, tag, values, step, spec=None, tokenizer=None, conditions=None):
        captions = self.to_data(values, tokenizer=tokenizer)
        sources = (tokenizer.decode(conditions["text"].cpu()) if conditions is not None and "text" in conditions
                   else [""] * len(captions))
        lines = [f"| {i} | {src} | {out} |" for i, (src, out) in enumerate(zip(sources, captions))]
        writer.add_text(tag, "| # | condition | generated |\n|---|---|---|\n" + "\n".join(lines), step)

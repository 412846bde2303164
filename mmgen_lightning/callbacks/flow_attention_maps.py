"""Log where a FlowMatching model's patches look in the caption: for a few fixed validation captions,
the model draws an image, and for every word of the caption the cross-attention its patches pay to
that word (mean over heads and blocks, halfway along the path) is drawn over the image. TensorBoard
gets one grid under ``attention/text->image`` (a row per caption: the image, then one tile per word)
and the words of each row, in order, as text under the same tag. The drawing is the Captioner's
(:func:`~mmgen_lightning.callbacks.attention_maps.overlay`); only the direction is reversed.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import default_collate

from mmgen_lightning.callbacks.attention_maps import overlay
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.tokenizer import UNK_ID


class CaptionAttentionLogger(L.Callback):
    """Logs a FlowMatching model's cross-attention from image patches to each word of fixed captions.

    Args:
        num_samples: captions taken from the start of the validation split.
        every_n_epochs: log at the end of every n-th training epoch (0 turns this off).
        t: where along the path (0 noise, 1 data) the attention is read.
        max_words: words drawn per caption.
        tile_size: side in pixels of each drawn tile.
        sampling: keyword arguments of ``generate`` for the drawn images.
    """

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1, t: float = 0.5, max_words: int = 12,
                 tile_size: int = 64, sampling: dict | None = None) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.every_n_epochs, self.t = num_samples, every_n_epochs, t
        self.max_words, self.tile_size = max_words, tile_size
        self.sampling = sampling or {}
        self._conditions: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if getattr(pl_module, "condition", None) != "text" or getattr(pl_module, "output", None) != "image":
            raise TypeError("CaptionAttentionLogger draws a text->image FlowMatching model's cross-attention; "
                            f"{type(pl_module).__name__} is not one")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_maps(trainer, pl_module)

    @rank_zero_only
    def log_maps(self, trainer: L.Trainer, pl_module) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        if self._conditions is None:
            dataset = trainer.datamodule.dataset("val")
            items = [dataset[i] for i in range(min(self.num_samples, len(dataset)))]
            self._conditions = {k: v for k, v in default_collate(items).items() if k in get_modality("text").keys()}
        grid, words = self.render(pl_module, {k: v.to(pl_module.device) for k, v in self._conditions.items()})
        writer.add_image("attention/text->image", grid, trainer.global_step)
        lines = [f"| {i} | {' / '.join(row)} |" for i, row in enumerate(words)]
        writer.add_text("attention/text->image", "| row | words, left to right |\n|---|---|\n" + "\n".join(lines),
                        trainer.global_step)

    @torch.no_grad()
    def render(self, pl_module, conditions: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[str]]]:
        """Draw images for ``conditions`` and each word's attention: a ``3,H,W`` grid in [0, 1] and the words."""
        count = len(conditions["text"])
        out = pl_module.generate(conditions, count, seed=0, return_target=True, **self.sampling)
        was_training = pl_module.training
        pl_module.eval()
        try:
            maps = pl_module.cross_attention_maps(conditions, out["target"], t=self.t)  # B,h*w,L
        finally:
            pl_module.train(was_training)
        maps = maps.transpose(1, 2).unflatten(-1, pl_module.velocity.dit.grid).cpu()  # B,L,h,w
        pictures = F.interpolate(((out["image"].float() + 1) / 2).clamp(0, 1), size=(self.tile_size,) * 2,
                                 mode="nearest").cpu()
        if pictures.shape[1] == 1:
            pictures = pictures.expand(-1, 3, -1, -1)
        rows, all_words = [], []
        for index, ids in enumerate(conditions["text"].tolist()):
            positions = [p for p, token in enumerate(ids) if token >= UNK_ID][: self.max_words]
            tokenizer = pl_module.tokenizer
            all_words.append([tokenizer.tokenizer.id_to_token(ids[p]) if tokenizer else str(ids[p]) for p in positions])
            rows.append([pictures[index]] + [overlay(pictures[index], maps[index, p]) for p in positions])
        columns = max(len(row) for row in rows)
        blank = torch.zeros_like(rows[0][0])
        tiles = [tile for row in rows for tile in row + [blank] * (columns - len(row))]
        return torchvision.utils.make_grid(tiles, nrow=columns, padding=2, pad_value=1.0), all_words

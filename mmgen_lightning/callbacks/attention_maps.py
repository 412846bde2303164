"""Log where a captioner looks: cross-attention heat maps of generated captions, drawn over the input.

Every ``every_n_epochs`` epochs the model captions a few fixed validation inputs, and for every
generated word its cross-attention (mean over heads, and over layers unless ``layer`` picks one)
is drawn over the input: over the image, over each frame of a video (over the window of each frame
the encoder sees, when it takes glimpses), or along the time axis of an
audio clip's log-mel spectrogram (low frequencies at the bottom). TensorBoard gets one grid under
``attention/<modality>->text`` (a row per input: the input, then one tile per word; for video a
row of frames, then a row per word) and the words of each row, in order, as text under the same tag.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from mmgen_lightning.modalities import get_modality
from mmgen_lightning.tokenizer import EOS_ID, UNK_ID


class AttentionMapLogger(L.Callback):
    """Logs a captioner's cross-attention for each generated word, drawn over its input.

    Args:
        num_samples: inputs taken from the start of the validation split.
        every_n_epochs: log at the end of every n-th training epoch (0 turns this off).
        layer: decoder layer whose cross-attention is drawn (negative counts from the last);
            default: the mean over layers.
        max_words: words drawn per caption.
        tile_size: side in pixels of each drawn tile.
        sampling: keyword arguments of ``generate`` (default: greedy captions).
    """

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1, layer: int | None = None, max_words: int = 12,
                 tile_size: int = 64, sampling: dict | None = None) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.max_words = max_words
        self.tile_size = tile_size
        self.sampling = sampling or {}
        self._inputs: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if not hasattr(pl_module, "cross_attention_maps"):
            raise TypeError(f"AttentionMapLogger draws a Captioner's cross-attention; "
                            f"{type(pl_module).__name__} has no cross_attention_maps")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_maps(trainer, pl_module)

    def fixed_inputs(self, trainer: L.Trainer, modality: str) -> Tensor:
        if self._inputs is None:
            dataset = trainer.datamodule.dataset("val")
            self._inputs = torch.stack([dataset[i][modality] for i in range(min(self.num_samples, len(dataset)))])
        return self._inputs

    @rank_zero_only
    def log_maps(self, trainer: L.Trainer, pl_module) -> None:
        writer = getattr(trainer.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        modality = pl_module.modality
        inputs = self.fixed_inputs(trainer, modality).to(pl_module.device)
        grid, words = self.render(pl_module, inputs)
        tag = f"attention/{modality}->text"
        writer.add_image(tag, grid, trainer.global_step)
        lines = [f"| {i} | {' / '.join(row)} |" for i, row in enumerate(words)]
        writer.add_text(tag, "| row | words, left to right |\n|---|---|\n" + "\n".join(lines), trainer.global_step)

    @torch.no_grad()
    def render(self, pl_module, inputs: Tensor) -> tuple[Tensor, list[list[str]]]:
        """Caption ``inputs`` and draw each word's attention: a ``3,H,W`` grid in [0, 1] and the
        words of each input."""
        modality = pl_module.modality
        captions = pl_module.generate({modality: inputs}, len(inputs), to="text", **self.sampling)["text"]
        was_training = pl_module.training
        pl_module.eval()
        try:
            maps = pl_module.cross_attention_maps({modality: inputs}, captions, layer=self.layer)  # B,L-1,N
        finally:
            pl_module.train(was_training)
        encoder = pl_module.encoder
        maps = maps[..., encoder.num_prefix_tokens:].unflatten(-1, encoder.grid).cpu()
        canvases = self.canvases(pl_module, modality, inputs)  # B,frames,3,S,S
        rows, all_words = [], []
        for index, caption in enumerate(captions.tolist()):
            end = caption.index(EOS_ID) if EOS_ID in caption else len(caption)
            positions = [p for p in range(1, end) if caption[p] >= UNK_ID][: self.max_words]
            words = [pl_module.tokenizer.tokenizer.id_to_token(caption[p]) if pl_module.tokenizer else str(caption[p])
                     for p in positions]
            all_words.append(words)
            frames = canvases[index]
            if get_modality(modality).frames:  # a row of frames, then one row per word over every frame
                rows.append(list(frames))
                rows += [[overlay(frame, maps[index, p - 1, f]) for f, frame in enumerate(frames)] for p in positions]
            else:
                heats = [maps[index, p - 1] for p in positions]
                rows.append([frames[0]] + [overlay(frames[0], heat.view(1, -1) if heat.ndim == 1 else heat)
                                           for heat in heats])
        columns = max(len(row) for row in rows)
        blank = torch.zeros_like(rows[0][0])
        tiles = [tile for row in rows for tile in row + [blank] * (columns - len(row))]
        return torchvision.utils.make_grid(tiles, nrow=columns, padding=2, pad_value=1.0), all_words

    def canvases(self, pl_module, modality: str, inputs: Tensor) -> Tensor:
        """What the maps are drawn on: ``B,frames,3,S,S`` in [0, 1], as the modality draws itself: an
        image, a video's frames (the glimpses, when the encoder looks at windows of the frames), an
        audio clip's log-mel spectrogram through the encoder's own frontend."""
        encoder = pl_module.encoder
        if hasattr(encoder, "windows"):
            inputs = encoder.windows(inputs.float())[0]
        return get_modality(modality).pictures(inputs.float(), self.tile_size, log_mel=getattr(encoder, "log_mel", None))


def overlay(canvas: Tensor, heat: Tensor) -> Tensor:
    """Blend a heat map (``h,w``, any non-negative scale; one cell per encoder token) over a
    ``3,S,S`` canvas in [0, 1]: black-red-yellow-white from the least to the most attended cell."""
    heat = heat.float() / heat.max().clamp_min(1e-12)
    heat = F.interpolate(heat[None, None], size=canvas.shape[-2:], mode="nearest")[0, 0]
    color = torch.stack([(3 * heat).clamp(0, 1), (3 * heat - 1).clamp(0, 1), (3 * heat - 2).clamp(0, 1)])
    return 0.45 * canvas.mean(0, keepdim=True) + 0.55 * color

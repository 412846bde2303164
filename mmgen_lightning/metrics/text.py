"""Text metrics of generated captions against each item's reference caption: BLEU and chrF
(torchmetrics, the same settings as the Captioner's validation). Whether captions state the right
attributes is measured by coherence (``metrics.coherence``), through the dataset's ``parse_caption``.

Each item has one reference caption from varied templates, so a caption that states every
attribute right in other words still scores below 1: read BLEU/chrF as fluency against the
dataset's wording, and coherence as correctness.
"""

from __future__ import annotations

from torch import nn
from torchmetrics.text import BLEUScore, CHRFScore


class TextQuality(nn.Module):
    """BLEU (smoothed, up to ``n_gram``-grams) and chrF of hypotheses against one reference each.

    Both keep sums as torchmetrics states, so under DDP each process updates with its share.
    """

    def __init__(self, n_gram: int = 4) -> None:
        super().__init__()
        self.bleu = BLEUScore(n_gram=n_gram, smooth=True)
        self.chrf = CHRFScore()

    def update(self, hypotheses: list[str], references: list[str]) -> None:
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        self.bleu.update(hypotheses, [[r] for r in references])
        self.chrf.update(hypotheses, [[r] for r in references])

    def compute(self) -> dict[str, float]:
        return {"bleu": self.bleu.compute().item(), "chrf": self.chrf.compute().item()}

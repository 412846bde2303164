"""The Aligner's hard negatives (``objectives/aligner.py``): swapped-word captions touch only two different
words, the InfoNCE with per-query negatives matches its closed form and reduces to the plain one without
negatives, and a bag-of-words text encoder, which cannot tell a caption from its swaps, pays for each
of them exactly what the closed form says."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmgen_lightning.losses import symmetric_info_nce
from mmgen_lightning.objectives.aligner import (AlignerObjective, contrastive_objective, info_nce_with_negatives,
                                                swapped_words)
from mmgen_lightning.tokenizer import BOS_ID, EOS_ID, PAD_ID

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def captions() -> tuple[torch.Tensor, torch.Tensor]:
    """Three padded captions: five different words, two words (one repeated), one word only."""
    text = torch.tensor([[BOS_ID, 4, 5, 6, 7, 8, EOS_ID, PAD_ID],
                         [BOS_ID, 9, 9, 10, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                         [BOS_ID, 11, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
    return text, text != PAD_ID


def test_a_swap_trades_two_different_words_and_leaves_the_rest():
    text, mask = captions()
    swapped, done = swapped_words(text, mask, 50, torch.Generator().manual_seed(0))
    assert swapped.shape == (150, 8) and done.tolist() == [True] * 100 + [False] * 50
    original = text.repeat_interleave(50, 0)
    changed = swapped != original
    assert (changed.sum(1)[:100] == 2).all() and not changed[100:].any()
    assert not changed[:, 0].any() and not changed[original == EOS_ID].any() and not changed[original == PAD_ID].any()
    for row in range(100):  # the two positions hold each other's words
        first, second = changed[row].nonzero()[:, 0].tolist()
        assert (swapped[row, first], swapped[row, second]) == (original[row, second], original[row, first])
    # every pair of different words of the first caption is drawn (5 words: 10 pairs)
    pairs = {tuple(changed[row].nonzero()[:, 0].tolist()) for row in range(50)}
    assert len(pairs) == 10


def test_info_nce_with_negatives_matches_the_closed_form():
    # queries q1 = e1, q2 = e2; texts t1 = e1, t2 = (e1 + e2)/sqrt 2; q1's negative e2 (kept), q2's (masked)
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [2 ** -0.5, 2 ** -0.5]])
    negatives = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    keep = torch.tensor([[True], [False]])
    s, c = 3.0, 2 ** -0.5
    e = math.exp
    to_texts = 0.5 * (-math.log(e(s) / (e(s) + e(s * c) + e(0.0))) - math.log(e(s * c) / (1 + e(s * c))))
    to_queries = 0.5 * (-math.log(e(s) / (e(s) + 1)) - math.log(0.5))
    loss = info_nce_with_negatives(queries, texts, s, queries, texts, negatives, keep)
    assert abs(loss.item() - 0.5 * (to_texts + to_queries)) < 1e-6
    # no negative kept: the plain symmetric InfoNCE
    torch.testing.assert_close(info_nce_with_negatives(queries, texts, s, queries, texts, negatives, keep & False),
                               symmetric_info_nce(queries, texts, s))


def test_a_bag_of_words_text_encoder_pays_for_each_swap_and_the_loss_reaches_the_text_encoder():
    torch.manual_seed(0)
    text, mask = captions()
    images = F.normalize(torch.randn(3, 8), dim=1)
    table = torch.nn.Embedding(16, 8)

    def embed(batch, modality):
        if modality == "image":
            return images
        words = batch["text_mask"] & (batch["text"] > EOS_ID)  # a bag of words: order cannot matter
        return F.normalize((table(batch["text"]) * words.unsqueeze(-1)).sum(1), dim=1)

    log_scale = torch.tensor(math.log(10.0))
    count = 4
    plain = contrastive_objective(embed, {"text": text, "text_mask": mask}, ["image", "text"], log_scale,
                                  AlignerObjective(temperature=0.1))
    hard = contrastive_objective(embed, {"text": text, "text_mask": mask}, ["image", "text"], log_scale,
                                 AlignerObjective(temperature=0.1, swap_negatives=count))
    # each swap embeds as its caption: images 1 and 2 meet `count` copies of their positive logit, image 3 none
    z = plain["embeddings"]["text"]
    logits = 10.0 * images @ z.T
    positives = logits.diagonal()
    extra = torch.tensor([count, count, 0.0]) * positives.exp()
    to_texts = -(positives - (logits.exp().sum(1) + extra).log()).mean()
    to_images = F.cross_entropy(10.0 * z @ images.T, torch.arange(3))
    torch.testing.assert_close(hard["loss"], 0.5 * (to_texts + to_images))
    assert hard["loss"] > plain["loss"]
    hard["loss"].backward()
    assert table.weight.grad.abs().sum() > 0


def test_swap_negatives_must_not_be_negative():
    with pytest.raises(ValueError, match="objective.swap_negatives must be >= 0"):
        AlignerObjective(swap_negatives=-1)


def test_the_datas_own_negatives_join_the_image_to_text_softmax_and_missing_ones_are_never_embedded():
    torch.manual_seed(0)
    text, mask = captions()
    images = F.normalize(torch.randn(3, 8), dim=1)
    table = torch.nn.Embedding(16, 8)
    seen = []

    def embed(batch, modality):
        if modality == "image":
            return images
        seen.append(batch["text_mask"])
        hidden = table(batch["text"]) * torch.arange(1, batch["text"].shape[1] + 1)[:, None]  # word order counts
        return F.normalize((hidden * batch["text_mask"].unsqueeze(-1)).sum(1), dim=1)

    # caption 1 has two negatives, caption 2 one (its first row is missing), caption 3 none
    negatives = torch.stack([text[[1, 2]], text[[0, 0]], text[[0, 1]]])
    negatives_mask = torch.stack([mask[[1, 2]], mask[[0, 0]], mask[[0, 1]]])
    negatives[1, 0], negatives_mask[1, 0] = PAD_ID, False
    negatives[2], negatives_mask[2] = PAD_ID, False
    batch = {"text": text, "text_mask": mask, "text_negatives": negatives, "text_negatives_mask": negatives_mask}
    log_scale = torch.tensor(math.log(10.0))
    hard = contrastive_objective(embed, batch, ["image", "text"], log_scale, AlignerObjective(temperature=0.1))
    assert all(rows.any(1).all() for rows in seen)  # no caption-less row reached the text encoder
    z = hard["embeddings"]["text"]
    kept = negatives_mask.any(-1)
    given = torch.zeros(3, 2, 8)
    given[kept] = embed({"text": negatives[kept], "text_mask": negatives_mask[kept]}, "text")
    torch.testing.assert_close(hard["loss"], info_nce_with_negatives(images, z, 10.0, images, z, given, kept))
    # with swaps as well: the data's negatives first, then the swaps
    both = contrastive_objective(embed, batch, ["image", "text"], log_scale,
                                 AlignerObjective(temperature=0.1, swap_negatives=2))
    assert both["loss"] > hard["loss"]
    # no row kept anywhere: the plain InfoNCE
    none = {**batch, "text_negatives_mask": torch.zeros_like(negatives_mask)}
    torch.testing.assert_close(contrastive_objective(embed, none, ["image", "text"], log_scale,
                                                     AlignerObjective(temperature=0.1))["loss"],
                               symmetric_info_nce(images, z, 10.0))


def test_the_aligners_text_encoder_reads_word_order_from_the_start():
    from mmgen_lightning.models.aligner import Aligner
    from tests.conftest import ToyDataModule

    data = ToyDataModule(modalities=["image", "text"])
    torch.manual_seed(0)
    model = Aligner(data.data_spec, network={"width": 16, "embed_dim": 8, "encoder_layers": 1, "text_layers": 1,
                                             "num_heads": 2, "text_position_std": 1.0})
    text = torch.tensor([[BOS_ID, 4, 5, 6, EOS_ID, PAD_ID], [BOS_ID, 6, 5, 4, EOS_ID, PAD_ID]])  # 4 and 6 swapped
    with torch.no_grad():  # a position table of zeros would make these two one bag of words, and equal
        caption, twin = model.embed({"text": text, "text_mask": text != PAD_ID}, "text")
    assert (caption - twin).abs().max() > 1e-4

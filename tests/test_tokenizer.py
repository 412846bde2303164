"""CaptionTokenizer: padding and masks of the batch contract, exact round trips of every built-in
caption, and serialisations (tokenizer.json, the checkpoint's JSON string) that encode identically;
TokenLayout's stream of text and codes in both orders."""

import re

import pytest
import torch

from mmgen_lightning.datamodules import CaptionTokenizer, DigitsDataModule, ShapesDataModule
from mmgen_lightning.datamodules.digits import caption as digits_caption
from mmgen_lightning.tokenizer import (BOS_ID, CODE, EOS_ID, KINDS, PAD_ID, SPECIAL, SPECIAL_TOKENS, TEXT, UNK_ID,
                                      TokenLayout)


def normalised(text: str) -> str:
    """What a word-level decode gives back: lower case, punctuation as its own word."""
    return " ".join(re.findall(r"\w+|[^\w\s]+", text.lower()))


@pytest.fixture(scope="module")
def shapes_corpus():
    return ShapesDataModule().caption_corpus()


@pytest.fixture(scope="module")
def tokenizer(shapes_corpus):
    return CaptionTokenizer.train(shapes_corpus, max_length=24)


@pytest.mark.parametrize("source", [ShapesDataModule, DigitsDataModule])
def test_every_corpus_caption_round_trips(source):
    datamodule = source()
    corpus = datamodule.caption_corpus()
    assert len(set(corpus)) == len(corpus)
    encoded = datamodule.tokenizer.encode(corpus)
    assert not (encoded["text"] == datamodule.tokenizer.unk_id).any()  # a closed, complete vocabulary
    assert datamodule.tokenizer.decode(encoded["text"]) == [normalised(c) for c in corpus]


def test_encode_pads_masks_and_cuts_keeping_eos(tokenizer):
    encoded = tokenizer.encode(["a small red circle on the left moving up",
                                "tiny cyan square at the top, heading down"])
    text, mask = encoded["text"], encoded["text_mask"]
    assert text.shape == mask.shape == (2, 24) and text.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [9 + 2, 9 + 2]
    assert (text[:, 0] == tokenizer.bos_id).all() and (text[torch.arange(2), mask.sum(1) - 1] == tokenizer.eos_id).all()
    assert (text[~mask] == tokenizer.pad_id).all()
    short = CaptionTokenizer.from_json(tokenizer.to_json(), max_length=5).encode("a small red circle on the left")
    assert short["text"][0].tolist()[-1] == tokenizer.eos_id and short["text_mask"].all()
    assert tokenizer.decode(short["text"]) == ["a small red"]


def test_unknown_words_decode_as_question_marks(tokenizer):
    assert tokenizer.decode(tokenizer.encode("a red zebra")["text"]) == ["a red ?"]


def test_saved_and_serialised_tokenizers_encode_identically(tokenizer, tmp_path):
    captions = ["a big purple diamond at the top that moves down", "large cyan square in the middle, heading left"]
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    expected = tokenizer.encode(captions)
    for restored in (CaptionTokenizer.from_file(path, 24), CaptionTokenizer.from_json(tokenizer.to_json(), 24)):
        assert restored.vocab_size == tokenizer.vocab_size
        encoded = restored.encode(captions)
        assert torch.equal(encoded["text"], expected["text"])
        assert torch.equal(encoded["text_mask"], expected["text_mask"])
    datamodule = ShapesDataModule(tokenizer_path=str(path))
    assert torch.equal(datamodule.tokenizer.encode(captions)["text"], expected["text"])


def test_the_vocabulary_does_not_depend_on_modalities():
    with_video = DigitsDataModule(["video", "text"]).tokenizer
    without = DigitsDataModule(["text"]).tokenizer
    assert with_video.to_json() == without.to_json()
    assert with_video.decode(with_video.encode(digits_caption(8, 2, 5))["text"]) == ["an eight moving left"]


def test_bad_inputs_are_errors(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="corpus"):
        CaptionTokenizer.train([])
    with pytest.raises(ValueError, match="kind"):
        CaptionTokenizer.train(["a red circle"], kind="sentencepiece")
    with pytest.raises(ValueError, match="max_length"):
        CaptionTokenizer.from_json(tokenizer.to_json(), max_length=2)
    with pytest.raises(ValueError, match="empty"):
        tokenizer.encode(["a red circle", ""])
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        CaptionTokenizer.from_file(tmp_path / "missing.json")
    assert set(KINDS) == {"word", "bpe"}


def test_bpe_round_trips_open_captions():
    captions = ["a zebra crossing a busy street", "two dogs play in the snow", "a red car at night"]
    tokenizer = CaptionTokenizer.train(captions * 20, kind="bpe", vocab_size=120)
    assert tokenizer.decode(tokenizer.encode(captions)["text"]) == captions


def test_special_ids_are_defined_once_and_the_old_import_path_still_works():
    from mmgen_lightning.datamodules import tokenizer as old_path

    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == tuple(range(len(SPECIAL_TOKENS)))
    assert old_path.CaptionTokenizer is CaptionTokenizer and old_path.SPECIAL_TOKENS is SPECIAL_TOKENS
    tokenizer = CaptionTokenizer.train(["a red circle"], max_length=6)
    ids = tokenizer.encode("a red circle")["text"][0].tolist()
    assert ids[0] == BOS_ID and ids[4] == EOS_ID and ids[5] == PAD_ID
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID)


# --- TokenLayout: one stream of text and codes in both orders, its roles and its sampling prefix ----
def test_stream_layout_round_trips_in_both_orders():
    layout = TokenLayout(text_vocab_size=10, num_codes=7, text_length=5, grid=(2, 3))
    text = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0], [1, 7, 8, 9, 2]])
    codes = torch.randint(0, 7, (3, 6))
    codes_first = torch.tensor([False, True, True])
    ids = layout.build(text, codes, codes_first)
    assert ids.shape == (3, layout.length) == (3, 5 + 6 + 2)
    back_text, back_codes = layout.split(ids, codes_first)
    assert torch.equal(back_text, text) and torch.equal(back_codes, codes)
    assert ids[0].tolist() == [1, 4, 5, 2, 0, layout.sep_image_id, *(codes[0] + 10).tolist(), 2]
    assert ids[1].tolist() == [1, *(codes[1] + 10).tolist(), layout.sep_text_id, 6, 2, 0, 0, 2]
    role, index = layout.roles(codes_first)
    assert ((ids >= 10) & (ids < 17)).eq(role == CODE).all()  # codes sit exactly in the code slots
    assert (role[1] == TEXT).sum() == 4 and (role == SPECIAL).sum(1).tolist() == [3, 3, 3]
    assert index[0][role[0] == CODE].tolist() == list(range(6)) and index[1][role[1] == TEXT].tolist() == [1, 2, 3, 4]
    for row, first in enumerate(codes_first.tolist()):  # the sampling prefix is the stream up to the separator
        prefix = layout.prefix(codes[row:row + 1] if first else text[row:row + 1], first)
        assert torch.equal(prefix[0], ids[row, : prefix.shape[1]])

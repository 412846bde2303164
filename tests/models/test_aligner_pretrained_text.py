"""Aligner with a pretrained caption encoder (``network.text_encoder_path``): frozen it stays put and
trainable it moves, captions outside the datamodule's vocabulary are read by the encoder's own tokenizer,
hard negatives go through it, checkpoints reload and embed the same, and a misplaced option stops with
one line."""

import dataclasses

import pytest
import torch

from mmgen_lightning.models.aligner import Aligner, load_aligner
from tests.conftest import ToyDataModule
from tests.models.test_flow import tiny_bert
from tests.models.test_pretrained_text import fit_and_check_what_moves

TINY = {"embed_dim": 16, "width": 32, "encoder_layers": 1, "num_heads": 2}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_aligner(spec: dict, bert, trainable: bool = False, **options) -> Aligner:
    network = {**TINY, "text_encoder_path": str(bert), "text_encoder_trainable": trainable}
    return Aligner(spec, network=network, optimization={"warmup_steps": 0}, **options)


@pytest.mark.parametrize("trainable", [False, True])
def test_the_pretrained_encoder_trains_only_when_asked_and_reloads(tmp_path, trainable):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny_aligner(datamodule.data_spec, tmp_path / "bert", trainable)
    fit_and_check_what_moves(model, model.encoders["text"], datamodule, tmp_path, trainable)
    assert model.tokenizer is datamodule.tokenizer  # attached by fit, as `mmgen fit` does

    model.eval()
    ids = datamodule.tokenizer.encode(["class one", "class two"])
    with torch.no_grad():
        embedded = model.embed(ids, "text")
    assert embedded.shape == (2, TINY["embed_dim"]) and not torch.allclose(embedded[0], embedded[1])
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    # the strings and their token ids reach the same vector
    torch.testing.assert_close(model.embed_captions(["class one", "class two"]), embedded)

    loaded = load_aligner(tmp_path / "ckpt" / "last.ckpt")
    assert all(p.requires_grad == trainable for p in loaded.encoders["text"].encoder.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(ids, "text"), embedded)
    captions = ["a red circle", "a blue square", "class three"]
    torch.testing.assert_close(loaded.embed_captions(captions), model.embed_captions(captions))
    image = next(iter(datamodule.val_dataloader()))["image"][:2]
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed({"image": image}, "image"), model.embed({"image": image}, "image"))


def test_captions_outside_the_datamodules_vocabulary_are_read_by_the_encoders_tokenizer(tmp_path, capsys):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16)
    model = tiny_aligner(datamodule.data_spec, tmp_path / "bert").eval()
    model.tokenizer = datamodule.tokenizer
    # the toy vocabulary knows "class" and four numbers: both captions would decode to "? ? ?"
    assert datamodule.tokenizer.decode(datamodule.tokenizer.encode(["a red circle", "a blue square"])["text"]) \
        == ["? ? ?", "? ? ?"]
    red, blue = model.embed_captions(["a red circle", "a blue square"])
    assert not torch.allclose(red, blue)
    assert not torch.allclose(red, model.embed_captions(["a red square"])[0])
    # and `mmgen retrieve` does not warn that words are unread: the encoder reads them
    from mmgen_lightning.retrieve import embed_query

    torch.testing.assert_close(embed_query(model, "text", "a red circle")[0], red)
    assert "warning" not in capsys.readouterr().err
    model.config = dataclasses.replace(model.config, network=dataclasses.replace(model.config.network,
                                                                                 text_encoder_path=None))
    embed_query(model, "text", "a red circle")
    assert "unknown" in capsys.readouterr().err  # the project's tokenizer warns when it is the reader


def test_swapped_word_negatives_go_through_the_pretrained_encoder(tmp_path):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=4)
    model = tiny_aligner(datamodule.data_spec, tmp_path / "bert", objective={"swap_negatives": 1})
    model.tokenizer = datamodule.tokenizer
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    read = []
    encode = model.encoders["text"].encoder.forward
    model.encoders["text"].encoder.forward = lambda captions: read.append(list(captions)) or encode(captions)
    loss = model.contrastive(batch, ["image", "text"])["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    # the captions, then each caption with its two words swapped ("class one" -> "one class")
    captions = datamodule.tokenizer.decode(batch["text"])
    assert read == [captions, [" ".join(reversed(c.split())) for c in captions]]
    assert model.encoders["text"].project[0].weight.grad.abs().sum() > 0


def test_misplaced_options_stop_with_one_line(tmp_path):
    tiny_bert(tmp_path / "bert")
    datamodule = ToyDataModule(modalities=["image", "text", "label"], size=16)
    with pytest.raises(ValueError, match=r"network.text_encoder_path reads captions, but this Aligner aligns no "
                                         r"text \(image, label\)"):
        tiny_aligner(datamodule.data_spec, tmp_path / "bert", modalities=["image", "label"])
    with pytest.raises(ValueError, match="network.text_encoder_trainable needs network.text_encoder_path"):
        Aligner(datamodule.data_spec, network={**TINY, "text_encoder_trainable": True})
    model = tiny_aligner(datamodule.data_spec, tmp_path / "bert")  # no tokenizer attached
    ids = datamodule.tokenizer.encode(["class one"])
    with pytest.raises(ValueError, match="network.text_encoder_path needs the datamodule's tokenizer"):
        model.embed(ids, "text")
    with pytest.raises(FileNotFoundError, match="text_encoder_path: .* is not a local transformers model folder"):
        tiny_aligner(datamodule.data_spec, tmp_path / "missing")

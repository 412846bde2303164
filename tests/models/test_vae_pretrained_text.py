"""MultimodalVAE with a pretrained caption encoder (``network.text_encoder_path``): frozen it stays put and
trainable it moves, the caption's posterior depends on its words, checkpoints reload and sample the same,
and a misplaced option stops with one line."""

import pytest
import torch

from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.layers.conditioning import PretrainedCaptionEncoder
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule
from tests.models.test_flow import tiny_bert
from tests.models.test_pretrained_text import fit_and_check_what_moves

TINY = {"latent_dim": 4, "width": 8, "text_width": 16}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_vae(spec: dict, bert, trainable: bool = False, **options) -> MultimodalVAE:
    network = {**TINY, "text_encoder_path": str(bert), "text_encoder_trainable": trainable}
    return MultimodalVAE(spec, network=network, **options)


@pytest.mark.parametrize("trainable", [False, True])
def test_the_pretrained_encoder_trains_only_when_asked_and_reloads(tmp_path, trainable):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "text"], size=16, batch_size=8)
    model = tiny_vae(datamodule.data_spec, tmp_path / "bert", trainable)
    fit_and_check_what_moves(model, model.autoencoder.encoders["text"], datamodule, tmp_path, trainable)

    model.eval()
    conditions = datamodule.tokenizer.encode(["class one", "class two"])
    with torch.no_grad():
        experts, _ = model.autoencoder.encode(model.autoencoder.read(conditions), ["text"])
    mu, logvar = experts["text"]
    assert mu.shape == logvar.shape == (2, TINY["latent_dim"]) and not torch.allclose(mu[0], mu[1])

    loaded = load_generator(tmp_path / "ckpt" / "last.ckpt")
    assert isinstance(loaded, MultimodalVAE)
    assert isinstance(loaded.autoencoder.encoders["text"], PretrainedCaptionEncoder)
    torch.manual_seed(1)
    expected = model.generate(conditions, 2, to="image")["image"]
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.generate(conditions, 2, to="image")["image"], expected)


def test_misplaced_options_stop_with_one_line(tmp_path):
    tiny_bert(tmp_path / "bert")
    datamodule = ToyDataModule(modalities=["image", "text", "label"], size=16)
    with pytest.raises(ValueError, match=r"network.text_encoder_path reads captions, but this MultimodalVAE models "
                                         r"no text \(image, label\)"):
        tiny_vae(datamodule.data_spec, tmp_path / "bert", modalities=["image", "label"])
    with pytest.raises(ValueError, match="network.text_encoder_trainable needs network.text_encoder_path"):
        MultimodalVAE(datamodule.data_spec, network={**TINY, "text_encoder_trainable": True})
    model = tiny_vae(datamodule.data_spec, tmp_path / "bert")  # no tokenizer attached
    with pytest.raises(ValueError, match="network.text_encoder_path needs the datamodule's tokenizer"):
        model.generate(datamodule.tokenizer.encode(["class one"]), 1, to="image")

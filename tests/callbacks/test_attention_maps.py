"""AttentionMapLogger draws each generated word's cross-attention over the input, in TensorBoard."""

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgen_lightning.callbacks.attention_maps import AttentionMapLogger, overlay
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule


def fit_with_maps(tmp_path, modality: str, **callback_kwargs):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=[modality, "text"], size=32)
    model = Captioner(datamodule.data_spec, network={"width": 32, "encoder_layers": 1, "decoder_layers": 1, "n_mels": 16,
                                                     "audio_frames": 8}, optimization={"lr": 3e-3, "warmup_steps": 5})
    logger = TensorBoardLogger(tmp_path, name=modality)
    callback = AttentionMapLogger(num_samples=3, **callback_kwargs)
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return model, callback, events


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_maps_and_words_reach_tensorboard(tmp_path, modality):
    model, callback, events = fit_with_maps(tmp_path, modality, max_words=4, tile_size=32)
    tag = f"attention/{modality}->text"
    images = events.Images(tag)
    assert len(images) == 2  # one grid per epoch
    text_tags = [t for t in events.Tags()["tensors"] if t.startswith(tag)]
    assert text_tags, events.Tags()
    table = events.Tensors(text_tags[0])[-1].tensor_proto.string_val[0].decode()
    assert "| row | words, left to right |" in table and table.count("\n| ") == 3
    grid, words = callback.render(model, callback._inputs)
    columns = 1 + max(len(w) for w in words)
    assert grid.shape == (3, 2 + 3 * 34, 2 + columns * 34)  # 32 px tiles with 2 px padding, one row per input
    assert images[-1].width == grid.shape[2] and images[-1].height == grid.shape[1]
    assert 0.0 <= grid.min() and grid.max() <= 1.0


def test_video_maps_are_drawn_over_the_glimpses_the_encoder_sees():
    spec = {"dataset": "toy", "modalities": ["video", "text"], "image_size": 16, "video_size": 32, "image_channels": 1,
            "num_frames": 3, "vocab_size": 12, "max_text_length": 6}
    model = Captioner(spec, network={"width": 32, "encoder_layers": 1, "decoder_layers": 1, "glimpse_size": 16,
                                     "patch_size": 4}).eval()
    video = -torch.ones(2, 3, 1, 32, 32)
    for frame in range(3):
        video[:, frame, :, 2:6, 4 + 8 * frame:8 + 8 * frame] = 1.0  # a bar sliding right along the top
    callback = AttentionMapLogger(max_words=2, tile_size=16)
    pictures = callback.canvases(model, "video", video)
    assert pictures.shape == (2, 3, 3, 16, 16)
    assert torch.equal(pictures[:, 0], pictures[:, 2])  # each glimpse is centred on the bar
    grid, words = callback.render(model, video)
    rows = sum(1 + len(w) for w in words)
    assert grid.shape == (3, 2 + rows * 18, 2 + 3 * 18) and 0.0 <= grid.min() and grid.max() <= 1.0


def test_overlay_marks_the_most_attended_cell():
    canvas = torch.zeros(3, 8, 8)
    heat = torch.tensor([[0.1, 0.2], [0.3, 2.0]])  # bottom-right is attended most
    picture = overlay(canvas, heat)
    assert picture[:, 4:, 4:].mean() > 0.5 and picture[:, :4, :4].mean() < 0.1


def test_needs_a_captioner(tmp_path):
    datamodule = ToyDataModule(modalities=["image", "text"], size=8)
    model = MultimodalVAE(datamodule.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16})
    trainer = L.Trainer(max_steps=1, logger=False, callbacks=[AttentionMapLogger()], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(TypeError, match="MultimodalVAE has no cross_attention_maps"):
        trainer.fit(model, datamodule=datamodule)

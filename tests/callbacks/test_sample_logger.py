"""SampleLogger writes images, captions and audio that TensorBoard's own reader finds."""

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgen_lightning.callbacks import SampleLogger
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import ToyDataModule


def test_sample_logger_writes_images_text_and_audio(tmp_path):
    datamodule = ToyDataModule(modalities=["image", "text", "audio"], size=16)
    model = MultimodalVAE(datamodule.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16})
    logger = TensorBoardLogger(tmp_path, name="run")
    logger_callback = SampleLogger(directions=["text->image", "image->text", "text->audio"], num_samples=4,
                                   every_n_epochs=1, sampling={"griffin_lim_iterations": 2})
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[logger_callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "audio": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert "samples/text->image" in tags["images"]
    assert any(tag.startswith("samples/text->audio") for tag in tags["audio"])
    text_tags = [t for t in tags["tensors"] if t.startswith("samples/image->text")]
    assert text_tags, tags
    table = events.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert "| # | condition | generated |" in table
    image = events.Images("samples/text->image")[0]
    assert image.width > 16 and image.height >= 16

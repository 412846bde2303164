"""Multimodal data sources; every one follows the batch contract of :mod:`mmgen_lightning.batch`."""

from mmgen_lightning.datamodules.base import MultimodalDataModule
from mmgen_lightning.datamodules.digits import DigitsDataModule
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.datamodules.scenes import ScenesDataModule
from mmgen_lightning.datamodules.shapes import ShapesDataModule
from mmgen_lightning.datamodules.streaming import StreamingDataModule
from mmgen_lightning.tokenizer import CaptionTokenizer

__all__ = ["CaptionTokenizer", "DigitsDataModule", "ManifestDataModule", "MultimodalDataModule",
           "ScenesDataModule", "ShapesDataModule", "StreamingDataModule"]

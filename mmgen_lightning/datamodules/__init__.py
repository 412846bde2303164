"""Multimodal data sources; every one follows the batch contract of :mod:`mmgen_lightning.batch`."""

from mmgen_lightning.datamodules.base import MultimodalDataModule
from mmgen_lightning.datamodules.digits import DigitsDataModule
from mmgen_lightning.datamodules.emoji import EmojiDataModule
from mmgen_lightning.datamodules.hf_table import HFTableDataModule
from mmgen_lightning.datamodules.image_folder import ImageFolderDataModule
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.datamodules.notes import NotesDataModule
from mmgen_lightning.datamodules.scenes import ScenesDataModule
from mmgen_lightning.datamodules.shapes import ShapesDataModule
from mmgen_lightning.datamodules.streaming import StreamingDataModule
from mmgen_lightning.tokenizer import CaptionTokenizer

__all__ = ["CaptionTokenizer", "DigitsDataModule", "EmojiDataModule", "HFTableDataModule", "ImageFolderDataModule",
           "ManifestDataModule", "MultimodalDataModule", "NotesDataModule", "ScenesDataModule", "ShapesDataModule",
           "StreamingDataModule"]

"""One object per batch key: what image, text, audio, video and label need, each in its own file.

A modality is not a string to branch on. Each :class:`Modality` (``base.py``) owns, for its tensor of
the batch contract (``batch.py``): its ``keys``, the ``check`` of its dtype and rank, its preprocessing
(``AudioModality.log_mel`` and ``fit_length``, ``random_shift`` and ``size`` of pixels), what models read
of it (``encoder_inputs``, ``condition_frontend``, ``condition_inputs``), ``conform`` (its tensors in
another model's terms), ``scored_dimensions`` (what a likelihood of it counts) and ``to_data``. Two
capabilities are mixed in: :class:`FileFormat` (``files.py``: ``read``, ``write``, manifest cells, shards)
and :class:`TensorBoardView` (``tensorboard.py``: ``log``, ``pictures``). The sizes come from a
:class:`DataSpec` (``spec.py``).

Default networks (encoders, decoders, token encoders, condition embedders) are built in
``models/layers/modality_networks.py``, beside the layers they are made of: nothing here imports a model.

Families, metrics and callbacks ask ``get_modality(name)`` instead of writing ``if name == "audio"``.
Adding a modality: a file here with a :class:`Modality` subclass (mixing in what applies), an instance in
``REGISTRY`` (``registry.py``), and its builders in ``modality_networks.py``.
"""

from mmgen_lightning.modalities.audio import AudioModality, LogMel
from mmgen_lightning.modalities.base import Modality
from mmgen_lightning.modalities.files import FileFormat, decompression_bomb
from mmgen_lightning.modalities.image import ImageModality
from mmgen_lightning.modalities.label import LabelModality
from mmgen_lightning.modalities.pixels import random_shift, resize_frames, to_uint8
from mmgen_lightning.modalities.registry import (JUDGEABLE, MODALITIES, REGISTRY, batch_keys, get_modality,
                                                 scored_dimensions)
from mmgen_lightning.modalities.spec import DataSpec, need
from mmgen_lightning.modalities.tensorboard import TensorBoardView
from mmgen_lightning.modalities.text import TextModality
from mmgen_lightning.modalities.video import VideoModality

__all__ = ["AudioModality", "DataSpec", "FileFormat", "ImageModality", "JUDGEABLE", "LabelModality", "LogMel",
           "MODALITIES", "Modality", "REGISTRY", "TensorBoardView", "TextModality", "VideoModality", "batch_keys",
           "decompression_bomb", "get_modality", "need", "random_shift", "resize_frames", "scored_dimensions",
           "to_uint8"]

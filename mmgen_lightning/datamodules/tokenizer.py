"""Moved to :mod:`mmgen_lightning.tokenizer` (models use it too); this name keeps old imports working."""

from mmgen_lightning.tokenizer import *  # noqa: F401,F403

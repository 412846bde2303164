from mmgen_lightning.models.base import GenerativeModule, load_generator
from mmgen_lightning.models.vae import MultimodalVAE

__all__ = ["GenerativeModule", "MultimodalVAE", "load_generator"]

from mmgen_lightning.models.base import GenerativeModule, load_generator
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.models.vae import MultimodalVAE

__all__ = ["Captioner", "ConditionalGAN", "GenerativeModule", "MultimodalVAE", "load_generator"]

from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.base import GenerativeModule, load_generator
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.flow import FlowMatching
from mmgen_lightning.models.gan import ConditionalGAN
from mmgen_lightning.models.token_transformer import TokenTransformer
from mmgen_lightning.models.vae import MultimodalVAE
from mmgen_lightning.models.vqvae import VQVAE

__all__ = ["Aligner", "Captioner", "ConditionalGAN", "FlowMatching", "GenerativeModule", "MultimodalVAE",
           "TokenTransformer", "VQVAE", "load_generator"]

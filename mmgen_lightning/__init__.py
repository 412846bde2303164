"""mmgen-lightning: PyTorch Lightning toolkit for multimodal generative models."""

__version__ = "0.1.0"

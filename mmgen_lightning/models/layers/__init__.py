"""Blocks shared by the families: per-modality encoders and decoders, conditioning embedders.
A layer never imports a family."""

from mmgen_lightning.callbacks.sample_logger import SampleLogger

__all__ = ["SampleLogger"]

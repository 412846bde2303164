from mmgen_lightning.callbacks.attention_maps import AttentionMapLogger
from mmgen_lightning.callbacks.evaluation import EvaluationCallback
from mmgen_lightning.callbacks.sample_logger import SampleLogger

__all__ = ["AttentionMapLogger", "EvaluationCallback", "SampleLogger"]

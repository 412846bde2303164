from mmgen_lightning.callbacks.attention_maps import AttentionMapLogger
from mmgen_lightning.callbacks.compile import CompileNetworks
from mmgen_lightning.callbacks.ema import EMA
from mmgen_lightning.callbacks.evaluation import EvaluationCallback
from mmgen_lightning.callbacks.flow_attention_maps import CaptionAttentionLogger
from mmgen_lightning.callbacks.heldout_score import HeldOutScoreCallback
from mmgen_lightning.callbacks.faults import DataErrorReport, ExceptionCheckpoint, RandomStateCheckpoint, StopOnNonFiniteLoss
from mmgen_lightning.callbacks.sample_logger import SampleLogger

__all__ = ["AttentionMapLogger", "CaptionAttentionLogger", "CompileNetworks", "DataErrorReport", "EMA", "EvaluationCallback",
           "ExceptionCheckpoint", "HeldOutScoreCallback", "RandomStateCheckpoint", "SampleLogger", "StopOnNonFiniteLoss"]

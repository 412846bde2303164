"""Evaluation: judges, coherence, sample quality (FID/KID/IS/precision-recall), text and likelihood
metrics, and the evaluator that reports (``mmgen evaluate``) and dashboards (``EvaluationCallback``) share."""

from mmgen_lightning.metrics.coherence import AttributeAgreement
from mmgen_lightning.metrics.evaluator import Evaluator, RealData, coherence, default_directions
from mmgen_lightning.metrics.features import InceptionFeatures, JudgeFeatures, find_inception_weights
from mmgen_lightning.metrics.judges import Judge, get_judge
from mmgen_lightning.metrics.likelihood import LikelihoodMetric, bits_per_dim
from mmgen_lightning.metrics.quality import PrecisionRecall, SampleQuality, frechet_distance
from mmgen_lightning.metrics.text import TextQuality

__all__ = ["AttributeAgreement", "Evaluator", "InceptionFeatures", "Judge", "JudgeFeatures", "LikelihoodMetric",
           "PrecisionRecall", "RealData", "SampleQuality", "TextQuality", "bits_per_dim", "coherence",
           "default_directions", "find_inception_weights", "frechet_distance", "get_judge"]

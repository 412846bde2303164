"""Inception weights are found offline or refused with an error that says what to do; judges give features."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from mmgen_lightning.metrics import features
from mmgen_lightning.metrics.features import INCEPTION_ENV, INCEPTION_FILE, InceptionFeatures, find_inception_weights


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


def test_missing_inception_weights_error_says_where_and_how(no_weights):
    with pytest.raises(FileNotFoundError) as error:
        find_inception_weights()
    message = str(error.value)
    assert INCEPTION_ENV in message and INCEPTION_FILE in message and "https://" in message
    assert str(no_weights / "hub" / "checkpoints" / INCEPTION_FILE) in message
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        InceptionFeatures()  # never a silent download


def test_inception_weights_from_argument_environment_or_torch_fidelity_cache(no_weights, monkeypatch):
    given = no_weights / "mine.pth"
    with pytest.raises(FileNotFoundError, match="mine.pth"):
        find_inception_weights(given)
    monkeypatch.setenv(INCEPTION_ENV, str(no_weights / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_ENV}=.*missing.pth is not a file"):
        find_inception_weights()
    given.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_ENV, str(given))
    assert find_inception_weights() == given
    monkeypatch.delenv(INCEPTION_ENV)
    cached = no_weights / "hub" / "checkpoints" / INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_inception_weights() == cached


def test_inception_features_load_a_local_weights_file(no_weights):
    """With torch-fidelity installed, a weights file in its format loads and gives 2048-d features and
    1008 logits; the file here holds random weights (the real ones are 95 MB and offline tests never fetch)."""
    inception_module = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    network = inception_module.FeatureExtractorInceptionV3
    with mock.patch.object(inception_module.torch, "load", return_value={}), \
            mock.patch.object(network, "load_state_dict", return_value=None):
        state = network("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused").state_dict()
    path = no_weights / INCEPTION_FILE
    torch.save(state, path)
    extractor = InceptionFeatures(path)
    grey = torch.rand(2, 1, 16, 16) * 2 - 1
    pooled, logits = extractor(grey)
    assert pooled.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pooled).all()


def test_inception_features_without_torch_fidelity_name_the_package(no_weights, monkeypatch):
    path = no_weights / INCEPTION_FILE
    torch.save({}, path)
    monkeypatch.setitem(__import__("sys").modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
        InceptionFeatures(path)


def test_judge_features_are_the_penultimate_layer_and_first_head():
    from mmgen_lightning.metrics.judges import Judge

    spec = {"attribute_names": ["shape", "color"], "attribute_sizes": [4, 6], "image_channels": 3, "image_size": 16}
    judge = Judge("image", spec, ("shape", "color"))
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    extracted, logits = features.JudgeFeatures(judge)(images)
    assert torch.allclose(extracted, judge.features(images))
    assert torch.allclose(logits, judge(images)[0], atol=1e-6)
    assert extracted.shape == (5, 128) and logits.shape == (5, 4)

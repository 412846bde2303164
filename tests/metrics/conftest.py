"""A digits image judge trained once per test session into a temporary cache, shared by the metric tests."""

from __future__ import annotations

import pytest

from mmgen_lightning.datamodules.digits import DigitsDataModule
from mmgen_lightning.metrics.judges import get_judge


@pytest.fixture(scope="session")
def judge_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("mmgen_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMGEN_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    return DigitsDataModule(modalities=["image", "text", "label"], batch_size=32)


@pytest.fixture(scope="session")
def digits_judge(judge_cache, digits):
    return get_judge(digits, "image")

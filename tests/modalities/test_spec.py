"""The typed data spec (mmgen_lightning/modalities/spec.py)."""

from __future__ import annotations

import pytest

from mmgen_lightning.modalities import DataSpec, need
from tests.modalities import SPEC


def test_data_spec_is_typed_and_reads_like_the_dict_it_came_from():
    spec = DataSpec.from_dict({**SPEC, "custom": 7})
    assert spec.image_size == 16 and spec.extra == {"custom": 7}
    assert spec.to_dict() == {**SPEC, "custom": 7} and spec == {**SPEC, "custom": 7}
    assert "video_size" not in spec and spec.get("video_size", 32) == 32  # unset fields read as absent
    with pytest.raises(KeyError):
        spec["video_size"]
    assert type(spec.to_dict()) is dict and DataSpec.from_dict(spec) is spec
    given_none = DataSpec.from_dict({"num_classes": None, "image_size": 16})
    assert given_none.num_classes is None and given_none == {"num_classes": None, "image_size": 16}
    assert "num_classes" in given_none and given_none["num_classes"] is None
    assert {**spec, "image_size": 32}["image_size"] == 32 and (spec | {"image_size": 32})["image_size"] == 32


def test_need_names_the_missing_size_and_the_sizes_present():
    spec = DataSpec.from_dict({"image_size": 16, "num_classes": None})
    assert need(spec, "image_size") == 16
    with pytest.raises(ValueError, match=r"data_spec has no 'num_classes' .* keys present: \['image_size', "
                                         r"'num_classes'\]"):
        need(spec, "num_classes")

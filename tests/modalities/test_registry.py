"""The registry and the questions asked of several modalities at once (mmgen_lightning/modalities/registry.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mmgen_lightning.modalities import JUDGEABLE, MODALITIES, batch_keys, get_modality, scored_dimensions


def test_registry_has_one_object_per_batch_key_and_names_the_allowed_ones():
    assert MODALITIES == ("image", "text", "audio", "video", "label")
    assert JUDGEABLE == ("image", "audio", "video")
    assert all(get_modality(name).name == name for name in MODALITIES)
    with pytest.raises(ValueError, match="unknown modality 'smell'; allowed: image, text, audio, video, label"):
        get_modality("smell")
    assert batch_keys(["image", "text", "label"]) == ["image", "text", "text_mask", "label"]


def test_scored_dimensions_count_pixels_real_tokens_labels_and_spectrogram_bins():
    batch = {"image": torch.zeros(2, 1, 4, 4), "text": torch.zeros(2, 5, dtype=torch.long),
             "text_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool),
             "label": torch.zeros(2, dtype=torch.long), "audio": torch.zeros(2, 100)}
    assert scored_dimensions(batch, ["image", "text", "label"]).tolist() == [16 + 2 + 1, 16 + 4 + 1]
    assert scored_dimensions(batch, ["audio"]).tolist() == [100, 100]
    assert scored_dimensions(batch, ["audio"], spectrogram_dims=64 * 33).tolist() == [2112, 2112]
    assert scored_dimensions(batch, ["image"]).dtype == torch.float64
    with pytest.raises(TypeError, match="spectrogram_bins"):  # a misspelt option is not dropped
        scored_dimensions(batch, ["audio"], spectrogram_bins=64)


def test_importing_the_modalities_imports_no_model_and_no_cli():
    # a fresh interpreter: this one has imported the models already
    code = ("import mmgen_lightning.modalities, sys; "
            "print(sorted(m for m in sys.modules if m.startswith(('mmgen_lightning.models', 'mmgen_lightning.cli'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

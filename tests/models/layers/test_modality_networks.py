"""Each modality's default networks (mmgen_lightning/models/layers/modality_networks.py)."""

from __future__ import annotations

import pytest
import torch

from mmgen_lightning.modalities import MODALITIES, DataSpec, get_modality
from mmgen_lightning.models.layers import modality_networks
from tests.modalities import SPEC


def test_default_networks_are_sized_from_the_spec():
    spec = DataSpec.from_dict(SPEC)
    batch = {"image": torch.zeros(2, 1, 16, 16), "text": torch.ones(2, 6, dtype=torch.long),
             "text_mask": torch.ones(2, 6, dtype=torch.bool), "video": torch.zeros(2, 4, 1, 16, 16),
             "label": torch.zeros(2, dtype=torch.long)}
    for name in ("image", "text", "video", "label"):
        modality = get_modality(name)
        encoder = modality_networks.encoder(modality, spec, 10, 16)
        assert encoder(*modality.encoder_inputs(batch)).shape == (2, 10), name
    z = torch.zeros(2, 10)
    assert modality_networks.decoder(get_modality("image"), spec, 10, 16)(z).shape == (2, 1, 16, 16)
    assert modality_networks.decoder(get_modality("video"), spec, 10, 16)(z).shape == (2, 4, 1, 16, 16)
    assert modality_networks.decoder(get_modality("label"), spec, 10, 16)(z).shape == (2, 3)
    assert modality_networks.decoder(get_modality("text"), spec, 10, 16)(z, batch["text"]).shape == (2, 5, 12)
    audio = get_modality("audio")
    mel = audio.log_mel(spec, n_mels=16, frames=8)(torch.zeros(2, 4000))  # the audio networks read the log-mel
    assert modality_networks.encoder(audio, spec, 10, 16, n_mels=16)(mel).shape == (2, 10)
    assert modality_networks.decoder(audio, spec, 10, 16, n_mels=16, frames=8)(z).shape == mel.shape


def test_token_encoders_give_tokens_that_fold_back_into_their_grid():
    spec = DataSpec.from_dict(SPEC)
    inputs = {"image": torch.zeros(2, 1, 16, 16), "video": torch.zeros(2, 4, 1, 16, 16), "audio": torch.zeros(2, 4000)}
    for name in MODALITIES:
        modality = get_modality(name)
        assert modality_networks.has_token_encoder(modality) == (name in inputs), name
        if name not in inputs:
            with pytest.raises(NotImplementedError, match=f"{name}: no token encoder"):
                modality_networks.token_encoder(modality, spec, 16)
            continue
        encoder = modality_networks.token_encoder(modality, spec, 16, num_layers=1, n_mels=16, frames=8)
        tokens = encoder(inputs[name])
        assert tokens.shape[0::2] == (2, 16), name
        assert tokens.shape[1] == encoder.num_prefix_tokens + torch.Size(encoder.grid).numel(), name
    glimpses = modality_networks.token_encoder(get_modality("video"), spec, 16, glimpse_size=8)
    assert glimpses.grid == (4, 2, 2)  # 8-pixel windows in 4-pixel patches


def test_condition_embedders_read_what_condition_inputs_give():
    spec = DataSpec.from_dict(SPEC)
    batch = {"label": torch.tensor([0, 2]), "text": torch.randint(0, 12, (2, 6)),
             "text_mask": torch.ones(2, 6, dtype=torch.bool), "audio": torch.randn(2, 4000).clamp(-1, 1)}
    for name in ("label", "text", "audio"):
        modality = get_modality(name)
        inputs = modality.condition_inputs(batch, modality.condition_frontend(spec, n_mels=16))
        embedder = modality_networks.condition_embedder(modality, spec, 8, n_mels=16, text_width=16, audio_width=8)
        assert embedder(inputs).shape == (2, 8)
    for name in ("image", "video"):
        with pytest.raises(NotImplementedError, match=f"{name}: no condition embedder"):
            modality_networks.condition_embedder(get_modality(name), spec, 8)


@pytest.mark.parametrize("factory, sizes", [
    (modality_networks.encoder, (10, 16)), (modality_networks.decoder, (10, 16)),
    (modality_networks.token_encoder, (16,)), (modality_networks.condition_embedder, (8,))])
def test_an_unknown_option_is_a_type_error_naming_it(factory, sizes):
    # the option no modality reads (a typo of n_mels) must not be dropped, even for a modality that reads none
    for name in ("audio", "label"):
        with pytest.raises(TypeError, match="n_mel"):
            factory(get_modality(name), DataSpec.from_dict(SPEC), *sizes, n_mel=16)


def test_a_missing_size_names_the_spec_key():
    with pytest.raises(ValueError, match="data_spec has no 'num_classes'"):
        modality_networks.encoder(get_modality("label"), DataSpec.from_dict({"image_size": 16}), 10, 16)


def test_the_patch_stem_embeds_each_patch_alone_and_a_bad_stem_is_named():
    from mmgen_lightning.models.aligner import AlignerNetwork
    from mmgen_lightning.models.captioner import CaptionerNetwork
    from mmgen_lightning.models.layers.token_encoders import PatchStem

    spec = DataSpec.from_dict({**SPEC, "image_channels": 3, "image_size": 32})
    encoder = modality_networks.token_encoder(get_modality("image"), spec, 16, patch_size=8, stem="patch")
    assert isinstance(encoder.stem, PatchStem) and encoder.grid == (4, 4)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    assert encoder(image).shape == (2, 16, 16)
    changed = image.clone()
    changed[:, :, 9, 17] = -image[:, :, 9, 17]  # a pixel of the patch in row 1, column 2
    moved = (encoder.stem(changed) - encoder.stem(image)).abs().sum((0, 1)) > 0
    assert moved.nonzero().tolist() == [[1, 2]]
    for group in (AlignerNetwork, CaptionerNetwork):
        with pytest.raises(ValueError, match="network.stem must be one of conv, patch"):
            group(stem="linear")

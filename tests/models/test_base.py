"""The generate contract, direction errors and self-contained checkpoints, on a tiny VAE."""

import pytest
import torch

from mmgen_lightning.batch import check_batch
from mmgen_lightning.modalities import DataSpec
from mmgen_lightning.tokenizer import CaptionTokenizer
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vae import MultimodalVAE

SPEC = {"dataset": "toy", "modalities": ["image", "text"], "image_size": 16, "image_channels": 1,
        "vocab_size": 12, "max_text_length": 6}


def tiny_vae(**kwargs) -> MultimodalVAE:
    model = MultimodalVAE(SPEC, network={"latent_dim": 4, "width": 8, "text_width": 16}, **kwargs)
    model.tokenizer = CaptionTokenizer.train(["a b c d e f g h"], max_length=6)
    return model


def test_generate_returns_batch_contract_for_every_direction():
    model = tiny_vae()
    text = model.tokenizer.encode(["a b c"])
    for conditions, to in [({}, "image"), (text, "image"), ({"image": torch.zeros(1, 1, 16, 16)}, "text")]:
        out = model.generate(conditions, num_samples=3, to=to)
        check_batch(out)
        assert out[to].shape[0] == 3
    assert model.training, "generate must restore the training flag"


def test_unserved_direction_names_the_served_ones():
    model = tiny_vae(modalities=["image"])
    with pytest.raises(ValueError, match=r"cannot generate text->image; it serves: image->image"):
        model.generate(model.tokenizer.encode(["a"]), num_samples=1, to="image")
    with pytest.raises(ValueError, match="to: unknown modality 'smell'"):
        model.generate({}, num_samples=1, to="smell")


def test_bad_conditions_are_named():
    model = tiny_vae()
    with pytest.raises(ValueError, match=r"conditions\['image'\] must have 4 dims"):
        model.generate({"image": torch.zeros(16, 16)}, num_samples=1, to="text")
    with pytest.raises(ValueError, match="batch size 2"):
        model.generate({"image": torch.zeros(2, 1, 16, 16)}, num_samples=3, to="text")
    with pytest.raises(TypeError, match="unexpected keyword argument 'guidance'"):
        model.generate({}, num_samples=1, to="image", guidance=2.0)


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="fusion: unknown 'sum'; allowed: poe, moe, mopoe"):
        MultimodalVAE(SPEC, fusion="sum")
    with pytest.raises(ValueError, match="modalities: 'audio' is not carried by the data"):
        MultimodalVAE(SPEC, modalities=["audio"])
    with pytest.raises(ValueError, match="data_spec has no 'image_channels'"):
        MultimodalVAE({"modalities": ["image"]})


def test_checkpoint_round_trip_is_self_contained(tmp_path):
    model = tiny_vae()
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "model.ckpt")
    loaded = load_generator(tmp_path / "model.ckpt")
    assert loaded.tokenizer.to_json() == model.tokenizer.to_json()
    z_image = torch.zeros(2, 1, 16, 16)
    torch.manual_seed(0)
    expected = model.generate({"image": z_image}, 2, to="text", truncation=0.0)["text"]
    torch.manual_seed(0)
    assert torch.equal(loaded.generate({"image": z_image}, 2, to="text", truncation=0.0)["text"], expected)
    # the model holds its spec typed; the checkpoint holds the plain dict it came from (weights_only loads it)
    assert isinstance(loaded.data_spec, DataSpec) and loaded.data_spec.image_size == 16 and loaded.data_spec == SPEC
    assert type(checkpoint["hyper_parameters"]["data_spec"]) is dict


def test_load_generator_refuses_foreign_and_broken_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_generator(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_generator(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(KeyError, match="no 'mmgen' entry"):
        load_generator(tmp_path / "plain.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {}, "mmgen": {"class_path": "os.system"}}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="refusing to import 'os.system'"):
        load_generator(tmp_path / "evil.ckpt")
    model = tiny_vae()
    checkpoint = {"state_dict": {k: v for k, v in model.state_dict().items() if "decoders" not in k},
                  "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    with pytest.raises(KeyError, match="missing keys"):
        load_generator(tmp_path / "partial.ckpt")


def test_every_family_declares_exactly_the_knobs_its_sample_takes():
    import inspect

    import mmgen_lightning.models as models
    from mmgen_lightning.knobs import check_sampling
    from mmgen_lightning.models.base import GenerativeModule

    families = [f for f in vars(models).values() if isinstance(f, type) and issubclass(f, GenerativeModule)
                and f is not GenerativeModule and f.sample is not GenerativeModule.sample]
    declared = [f for f in families if f.sampling_knobs]
    assert {"ConditionalGAN", "Captioner", "TokenTransformer"} <= {f.__name__ for f in declared}
    for family in declared:
        parameters = inspect.signature(family.sample).parameters
        taken = [n for n in parameters if n not in ("self", "conditions", "num_samples", "targets")]
        assert sorted(family.sampling_knobs) == sorted(taken), family.__name__
    from mmgen_lightning.models.gan import ConditionalGAN

    with pytest.raises(ValueError, match=r"truncation must be float >= 0, got -1"):  # one check, before sampling
        check_sampling(ConditionalGAN, {"truncation": -1}, shared_ranges=False)

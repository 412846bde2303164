"""PretrainedTextEncoder: a frozen encoder's cache and naming the encoder by its package; and the check the
families' pretrained-caption tests share."""

import sys

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmgen_lightning.models.layers.conditioning import PretrainedCaptionEncoder, PretrainedTextEncoder, model_folder
from tests.conftest import fit
from tests.models.test_flow import tiny_bert


def test_a_frozen_encoder_answers_from_its_cache_as_it_computes(tmp_path):
    tiny_bert(tmp_path / "bert")
    torch.manual_seed(0)
    encoder = PretrainedTextEncoder(str(tmp_path / "bert"))
    fresh = PretrainedTextEncoder(str(tmp_path / "bert"), cache_size=0)
    fresh.load_state_dict(encoder.state_dict())
    first = encoder.hidden_states(["a red circle", "two"])
    assert set(encoder._cache) == {"a red circle", "two"}
    # again, in another batch with other padding: the cached rows, the new one computed
    hidden, mask = encoder.hidden_states(["two", "a blue square one", "a red circle"])
    expected, expected_mask = fresh.hidden_states(["two", "a blue square one", "a red circle"])
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(hidden[mask], expected[expected_mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[2, mask[2]], first[0][0, first[1][0]])
    assert len(encoder._cache) == 3 and not fresh._cache


def test_a_trainable_encoder_keeps_no_cache_and_a_full_cache_starts_over(tmp_path):
    tiny_bert(tmp_path / "bert")
    trainable = PretrainedTextEncoder(str(tmp_path / "bert"), trainable=True)
    hidden, _ = trainable.hidden_states(["a red circle"])
    assert hidden.requires_grad and not trainable._cache
    small = PretrainedTextEncoder(str(tmp_path / "bert"), cache_size=2)
    small.hidden_states(["one", "two"])
    small.hidden_states(["three"])
    assert set(small._cache) == {"three"}


def test_the_encoder_is_named_by_a_folder_or_by_the_package_that_ships_it(tmp_path, monkeypatch):
    tiny_bert(tmp_path / "bert")
    package = tmp_path / "site" / "tiny_text_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"def get_model_path():\n    return {str(tmp_path / 'bert')!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert model_folder("tiny_text_model") == tmp_path / "bert"
    assert model_folder(str(tmp_path / "bert")) == tmp_path / "bert"
    assert PretrainedTextEncoder("tiny_text_model").hidden_size == 16
    with pytest.raises(FileNotFoundError, match="text_encoder_path: no_such_model_package is not a local"):
        model_folder("no_such_model_package")
    with pytest.raises(FileNotFoundError, match=f"text_encoder_path: {tmp_path} is not a local"):
        model_folder(str(tmp_path))
    sys.modules.pop("tiny_text_model", None)


def fit_and_check_what_moves(model, text_encoder, datamodule, root, trainable: bool) -> None:
    """Fit ``model`` three steps, its last checkpoint in ``root/ckpt``: the pretrained encoder inside
    ``text_encoder`` (a :class:`PretrainedCaptionEncoder`) moves only when ``trainable``, its projection always."""
    assert isinstance(text_encoder, PretrainedCaptionEncoder)
    bert, project = text_encoder.encoder.model, text_encoder.project
    before = {"bert": [p.detach().clone() for p in bert.parameters()],
              "project": [p.detach().clone() for p in project.parameters()]}
    fit(model, datamodule, max_steps=3, limit_val_batches=0, default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)], enable_checkpointing=True)
    moved = {name: any(not torch.equal(p, q) for p, q in zip(module.parameters(), before[name]))
             for name, module in (("bert", bert), ("project", project))}
    assert moved == {"bert": trainable, "project": True}
    assert all(p.requires_grad == trainable for p in bert.parameters())

"""REPA on FlowMatching (``alignment``): the loss is ``1 - cos`` between the projected tokens of the chosen
DiT block, pooled to the teacher's grid, and a frozen Aligner image encoder's patch tokens; the term falls
while the flow trains, the teacher is neither trained nor saved, the checkpoint samples without it, and
bad teachers or blocks are one-line errors naming the option."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.flow import TokenAlignment
from tests.conftest import ToyDataModule, fit
from tests.models.test_flow import tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def aligner_checkpoint(folder, size: int = 16, modalities=("image", "text")) -> str:
    """A tiny Aligner on the toy data (a few steps: a teacher need not be good to be used)."""
    data = ToyDataModule(list(modalities), batch_size=16)
    data.setup("fit")
    model = Aligner(data.data_spec, network={"embed_dim": 16, "width": 24, "encoder_layers": 1, "text_layers": 1,
                                             "num_heads": 2, "patch_size": 4}, optimization={"warmup_steps": 0})
    trainer = fit(model, data, max_steps=3, limit_val_batches=0)
    path = str(folder / "aligner.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_the_loss_is_one_minus_the_cosine_to_the_teacher_tokens(tmp_path):
    data = ToyDataModule(["image", "text"], batch_size=4)
    teacher = TokenAlignment.read_teacher(aligner_checkpoint(tmp_path), data.data_spec)
    model = tiny(data.data_spec, condition="text", network={"depth": 2},
                 alignment={"teacher": str(tmp_path / "aligner.ckpt"), "block": 2, "projector_width": 8})
    assert model.hparams["alignment"]["teacher_width"] == 24
    alignment = model.alignment
    alignment.use_teacher(teacher)
    images = torch.randn(4, 1, 16, 16)
    grid = model.velocity.dit.grid
    alignment.kept = torch.randn(4, grid[0] * grid[1], model.config.network.width)
    pooled = F.adaptive_avg_pool2d(alignment.kept.transpose(1, 2).unflatten(2, grid), teacher.grid)
    projected = alignment.projector(pooled.flatten(2).transpose(1, 2))
    expected = 1 - F.cosine_similarity(projected, teacher(images), dim=-1).mean()
    torch.testing.assert_close(alignment.loss(images), expected)


def test_an_aligned_flow_trains_keeps_its_teacher_frozen_and_samples_without_it(tmp_path):
    torch.manual_seed(0)
    teacher_path = aligner_checkpoint(tmp_path)
    data = ToyDataModule(["image", "text"], batch_size=16)
    model = tiny(data.data_spec, condition="text", alignment={"teacher": teacher_path, "block": 1, "weight": 1.0},
                 optimization={"lr": 3e-3})
    model.tokenizer = data.tokenizer
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(module.alignment.loss(batch["image"]).item())

    trainer = fit(model, data, max_steps=40, limit_val_batches=0, callbacks=[Watch()])
    assert sum(seen[-5:]) / 5 < 0.7 * sum(seen[:5]) / 5, seen  # the projected tokens move to the teacher's
    teacher = model.alignment._teacher[0]
    fresh = TokenAlignment.read_teacher(teacher_path, data.data_spec)
    for kept, read in zip(teacher.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(kept, read)  # frozen
    assert not any(key.startswith("alignment._teacher") or "teacher" in key for key in model.state_dict())
    checkpoint = tmp_path / "flow.ckpt"
    trainer.save_checkpoint(checkpoint)
    (tmp_path / "aligner.ckpt").unlink()  # sampling never reads the teacher
    loaded = load_generator(checkpoint)
    images = loaded.generate(data.tokenizer.encode(["class one"]), 2, to="image", steps=2, seed=0)["image"]
    assert images.shape == (2, 1, 16, 16)


def test_bad_teachers_and_blocks_name_the_option(tmp_path):
    data = ToyDataModule(["image", "text"])
    with pytest.raises(ValueError, match="alignment.teacher"):
        tiny(data.data_spec, alignment={"weight": 1.0})
    with pytest.raises(Exception, match="not-there.ckpt"):
        tiny(data.data_spec, alignment={"teacher": str(tmp_path / "not-there.ckpt")})
    path = aligner_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="alignment.block: 5 is past the DiT's 1 blocks"):
        tiny(data.data_spec, network={"depth": 1}, alignment={"teacher": path, "block": 5})
    with pytest.raises(ValueError, match="alignment.weight"):
        tiny(data.data_spec, alignment={"teacher": path, "weight": -1.0})
    other = ToyDataModule(["image", "text"]).data_spec | {"image_size": 32}
    with pytest.raises(ValueError, match="alignment.teacher: .* image_size=16, this data has image_size=32"):
        tiny(other, alignment={"teacher": path})
    text_audio = aligner_checkpoint(tmp_path / "..", modalities=("text", "audio"))
    with pytest.raises(ValueError, match="alignment.teacher: .* has no image encoder"):
        tiny(data.data_spec, alignment={"teacher": text_audio})

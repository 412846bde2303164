"""Shortcut models (Frans et al. 2024) on the flow objective: the self-consistency targets are the mean
velocity of two half steps, on the step's grid, with one condition drop for all three calls; a network
trained with them samples a two-mode density in one step where a plain flow's one step lands between
the modes; and FlowMatching trains, checks and samples a shortcut model through its API."""

import pytest
import torch
from torch import nn

from mmgen_lightning.models.flow import FlowMatching
from mmgen_lightning.objectives.flow import FlowObjective, flow_matching_objective, shortcut_targets
from tests.conftest import ToyDataModule, fit
from tests.models.test_flow import tiny, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Field(nn.Module):
    """``v(x, t, conditions, force_drop, step)`` for points ``x: B,2``: an MLP of ``(x, t, d)``; it records
    the calls it gets."""

    drop_prob = 0.0

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))
        self.calls: list[tuple] = []

    def forward(self, x, t, conditions, force_drop=None, step=None):
        step = torch.zeros_like(t) if step is None else step
        self.calls.append((t.clone(), step.clone(), None if force_drop is None else force_drop.clone()))
        return self.net(torch.cat([x, t[:, None], step[:, None]], 1))


def test_targets_are_two_half_steps_on_the_step_grid():
    field = Field()
    field.drop_prob = 0.5
    objective = FlowObjective(shortcut_fraction=0.25, shortcut_levels=3)
    x0, x1 = torch.randn(256, 2), torch.randn(256, 2)
    x_t, t, step, drop, target = shortcut_targets(field, x0, x1, {}, objective, torch.Generator().manual_seed(0))
    assert set(step.tolist()) == {1.0, 0.5, 0.25}  # levels 0..L-1
    assert torch.allclose(t / step, (t / step).round()) and (t + step <= 1).all()  # on the step's grid
    torch.testing.assert_close(x_t, (1 - t[:, None]) * x0 + t[:, None] * x1)
    (t1, asked1, drop1), (t2, asked2, drop2) = field.calls
    torch.testing.assert_close(t2, t + step / 2)
    # half steps of the smallest size ask the instantaneous velocity
    torch.testing.assert_close(asked1, torch.where(step == 0.25, 0.0, step / 2))
    assert torch.equal(asked1, asked2) and torch.equal(drop1, drop) and torch.equal(drop2, drop)
    assert 0.3 < drop.float().mean() < 0.7  # the velocity's drop_prob, once for the three calls
    with torch.no_grad():
        first = field.net(torch.cat([x_t, t[:, None], asked1[:, None]], 1))
        second = field.net(torch.cat([x_t + step[:, None] / 2 * first, t2[:, None], asked1[:, None]], 1))
    torch.testing.assert_close(target, (first + second) / 2)
    assert not target.requires_grad
    field.eval()  # no condition is dropped outside training
    assert not shortcut_targets(field, x0, x1, {}, objective)[3].any()


def two_modes(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Points at (+-2, 0) with a 0.1 spread: a plain flow's single Euler step lands between them."""
    sign = torch.randint(0, 2, (batch, 1), generator=generator) * 2.0 - 1
    return torch.cat([2 * sign, torch.zeros(batch, 1)], 1) + 0.1 * torch.randn(batch, 2, generator=generator)


def one_step(field: Field, step: float, batch: int = 512) -> torch.Tensor:
    x0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x0 + field(x0, torch.zeros(batch), {}, None, torch.full((batch,), step))


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_a_shortcut_network_samples_two_modes_in_one_step(fraction):
    torch.manual_seed(0)
    field, generator = Field(), torch.Generator().manual_seed(0)
    objective = FlowObjective(time_density="uniform", shortcut_fraction=fraction, shortcut_levels=5)
    optimizer = torch.optim.Adam(field.parameters(), 3e-3)
    for _ in range(1500):
        loss = flow_matching_objective(field, two_modes(128, generator), {}, objective, generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    samples = one_step(field, 1.0)
    near_a_mode = ((samples[:, 0].abs() - 2).abs() < 0.5) & (samples[:, 1].abs() < 0.5)
    if fraction:
        assert near_a_mode.float().mean() > 0.65, near_a_mode.float().mean()  # 0.75; the rest: x0 near the border
        assert 0.35 < (samples[:, 0] > 0).float().mean() < 0.65  # both modes, as often as the data has them
    else:  # the plain flow's one step is the mean velocity from noise: between the modes
        assert near_a_mode.float().mean() < 0.3, near_a_mode.float().mean()


def test_flow_matching_trains_and_samples_a_shortcut_model_in_one_step(tmp_path):
    torch.manual_seed(0)
    datamodule = ToyDataModule(modalities=["image", "label"], size=64, batch_size=16)
    model = tiny(datamodule.data_spec, condition="label", optimization={"lr": 3e-3},
                 objective={"cond_drop": 0.1, "shortcut_fraction": 0.25, "shortcut_levels": 3})
    fit(model, datamodule, max_steps=150, limit_val_batches=0)
    judge = train_classifier(datamodule)
    labels = torch.arange(4).repeat(8)
    for steps in (1, 2, 8):  # 8 >= 2^3: the instantaneous velocity, integrated by Euler
        samples = model.generate({"label": labels}, len(labels), sampler="shortcut", steps=steps, seed=0)["image"]
        assert samples.shape == (32, 1, 16, 16)
        assert (judge(samples).argmax(1) == labels).float().mean() >= 0.9, steps
    guided = model.generate({"label": labels}, len(labels), sampler="shortcut", steps=1, guidance_scale=2.0, seed=0)
    assert (judge(guided["image"]).argmax(1) == labels).float().mean() >= 0.9
    with pytest.raises(ValueError, match="steps: the shortcut sampler takes a power of two"):
        model.generate({"label": labels[:2]}, 2, sampler="shortcut", steps=3)
    plain = tiny(datamodule.data_spec, condition="label")
    with pytest.raises(ValueError, match="objective.shortcut_fraction"):
        plain.generate({"label": labels[:2]}, 2, sampler="shortcut", steps=1)
    with pytest.raises(ValueError, match="objective.shortcut_fraction"):
        tiny(datamodule.data_spec, condition="label", objective={"shortcut_fraction": 1.0})
    with pytest.raises(ValueError, match="sampling.sampler"):
        FlowMatching(datamodule.data_spec, condition="label", sampling={"sampler": "shortcuts"})

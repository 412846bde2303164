"""FlowMatching with ``network.prediction: data`` (JiT): the field is the straight path's velocity through
``x_t`` towards the DiT's ``x1``, exact when the DiT knows ``x1``, clipped near the data end; the option
is checked and a data-predicting model trains and samples through the same API."""

import pytest
import torch

from mmgen_lightning.models.flow import MIN_TIME_TO_DATA, FlowMatching, VelocityField
from mmgen_lightning.objectives.flow import straight_path
from tests.conftest import ToyDataModule, fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Oracle(torch.nn.Module):
    """A 'DiT' that outputs a fixed ``x1`` whatever it is given."""

    def __init__(self, x1: torch.Tensor) -> None:
        super().__init__()
        self.x1 = x1

    def forward(self, x, t, *conditioning):
        return self.x1


def test_a_data_prediction_of_the_true_x1_is_the_straight_path_velocity():
    x0, x1 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0.0, 0.3, 0.6, 0.9])
    x_t, u = straight_path(x0, x1, t)
    field = VelocityField(Oracle(x1), None, prediction="data")
    torch.testing.assert_close(field(x_t, t, {}), u)
    # near the data end the division stops at MIN_TIME_TO_DATA
    late = torch.full((4,), 0.99)
    torch.testing.assert_close(field(x_t, late, {}), (x1 - x_t) / MIN_TIME_TO_DATA)
    # the plain field returns the DiT's output as the velocity
    torch.testing.assert_close(VelocityField(Oracle(x1), None)(x_t, t, {}), x1)


def test_prediction_is_checked_and_a_data_predicting_flow_trains_and_samples():
    data = ToyDataModule(["image", "text"], size=32, batch_size=8)
    data.setup("fit")
    with pytest.raises(ValueError, match="network.prediction"):
        FlowMatching(data.data_spec, network={"prediction": "noise"})
    model = FlowMatching(data.data_spec, network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8,
                                                  "condition_layers": 1, "prediction": "data"},
                         optimization={"warmup_steps": 1}, sampling={"steps": 4})
    model.tokenizer = data.tokenizer
    batch = next(iter(data.train_dataloader()))
    before = model.loss(batch, torch.Generator().manual_seed(0)).item()
    fit(model, data, max_steps=30)
    assert model.loss(batch, torch.Generator().manual_seed(0)).item() < before
    images = model.generate(data.tokenizer.encode(["class one"]), 3, to="image", seed=0)["image"]
    assert images.shape == (3, 1, 16, 16) and images.min() >= -1 and images.max() <= 1

"""The base datamodule's train loader: its order is a function of the seed and the epoch, and a loader
restored from another's ``state_dict`` mid-epoch hands out exactly the batches the other had left."""

import torch

from tests.conftest import ToyDataModule


def images(batches):
    return [batch["image"] for batch in batches]


def test_a_restored_train_loader_continues_the_epoch():
    loader = ToyDataModule(size=16, batch_size=4).train_dataloader()
    batches = iter(loader)
    taken = [next(batches) for _ in range(2)]
    state = loader.state_dict()
    assert state == {"batches": 2}

    fresh = ToyDataModule(size=16, batch_size=4).train_dataloader()
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == 2
    for got, expected in zip(images(rest), images(batches)):
        assert torch.equal(got, expected)
    # the next epoch starts from its beginning, in an order of its own
    fresh.sampler.set_epoch(1)
    next_epoch = list(fresh)
    assert len(next_epoch) == 4
    assert not all(torch.equal(a, b) for a, b in zip(images(next_epoch), images(taken + rest)))

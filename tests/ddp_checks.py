"""What the 2-process DDP equivalence tests share: record each rank's batches and synced gradients, and
compare them with one process on the same global batch."""

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import mmgen_lightning.objectives.vae as vae_objective
from tests.conftest import fit_two_ranks_in_subprocess


def noise_free(mu, logvar, scale=1.0):
    return mu


class RecordRanks(Callback):
    """Saves, per rank, every training batch, and the first step's initial weights and synced gradients.

    Args:
        folder: where the ``.pt`` files go.
        noise_free_vae: replace the VAE's reparameterisation noise by its mean, so the objective is a
            deterministic function of the batch and 1-process and 2-process runs can be compared.
    """

    def __init__(self, folder: str, noise_free_vae: bool = False) -> None:
        self.folder, self.noise_free_vae, self.batches = folder, noise_free_vae, []

    def setup(self, trainer, pl_module, stage) -> None:
        if self.noise_free_vae:
            vae_objective.reparameterize = noise_free

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), f"{self.folder}/initial_rank{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({k: v.detach().cpu().clone() for k, v in batch.items()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:  # after backward: DDP has averaged the gradients over the ranks
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None},
                       f"{self.folder}/grads_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(self.batches, f"{self.folder}/batches_rank{trainer.global_rank}.pt")


def fit_two_processes(folder, model, data):
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "logger": False,
                    "enable_progress_bar": False, "enable_checkpointing": False, "limit_val_batches": 0,
                    "enable_model_summary": False, "default_root_dir": str(folder),  # its config.yaml copy goes there
                    "callbacks": [{"class_path": "tests.ddp_checks.RecordRanks",
                                   "init_args": {"folder": str(folder),
                                                 "noise_free_vae": "MultimodalVAE" in model["class_path"]}}]},
        "model": model, "data": data,
    }
    fit_two_ranks_in_subprocess(config, folder, timeout=300)
    return [torch.load(folder / f"batches_rank{r}.pt", weights_only=True) for r in (0, 1)]


def one_process_gradients(model, folder, first_batches):
    """Gradients of one process, same initial weights, on the two ranks' first batches joined into one."""
    model.load_state_dict(torch.load(folder / "initial_rank0.pt", weights_only=True))
    batch = {key: torch.cat([b[key] for b in first_batches]) for key in first_batches[0]}
    (folder / "one").mkdir()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RecordRanks(str(folder / "one"))])
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    return torch.load(folder / "one" / "grads_rank0.pt", weights_only=True)


def assert_same_gradients(expected, folder):
    """Both ranks hold the same gradients, equal to one process's to float32 rounding: the whole
    gradient to 1e-6 relative error, each tensor to 1e-4, except tensors whose gradient is zero up to
    rounding (a bias before a GroupNorm), which only rounding noise fills."""
    ranks = [torch.load(folder / f"grads_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == expected.keys() and len(expected) > 10
    for name in expected:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    flat = lambda grads: torch.cat([grads[name].flatten() for name in expected])  # noqa: E731
    total = flat(expected).norm()
    assert (flat(ranks[0]) - flat(expected)).norm() <= 1e-6 * total
    for name, grad in expected.items():
        if grad.norm() > 1e-6 * total:
            assert (ranks[0][name] - grad).norm() <= 1e-4 * grad.norm(), name


def image_keys(images):
    return {tuple(image.flatten().tolist()) for image in images}

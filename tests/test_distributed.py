"""DDP with 2 CPU processes (gloo) gives the gradients of 1 process on the same global batch, for the
VAE (streaming shards) and the captioner (manifest); the ranks see disjoint samples that cover the epoch."""

import json

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import mmgen_lightning.models.vae as vae_module
from mmgen_lightning.cli import main
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.datamodules.streaming import StreamingDataModule
from mmgen_lightning.models.captioner import Captioner
from mmgen_lightning.models.vae import MultimodalVAE
from tests.conftest import fit_two_ranks_in_subprocess
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus


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
            vae_module.reparameterize = noise_free

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
                    "callbacks": [{"class_path": "tests.test_distributed.RecordRanks",
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


def test_vae_on_streaming_shards(tmp_path, monkeypatch):
    manifest = write_corpus(tmp_path, 12)
    main(["shard", f"--data.manifest={manifest}", "--data.modalities=[image,text,audio]",
          "--data.split_fractions=[1,0,0]",
          *[f"--data.{k}={v}" for k, v in DATA_OPTIONS.items()], f"--out={tmp_path / 'shards'}", "--chunk_bytes=8KB"])
    options = {"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16, "fusion": "poe"}
    batches = fit_two_processes(tmp_path, {"class_path": "mmgen_lightning.models.MultimodalVAE", "init_args": options},
                                {"class_path": "mmgen_lightning.datamodules.streaming.StreamingDataModule",
                                 "init_args": {"input_dir": str(tmp_path / "shards"), "batch_size": 2}})
    # the ranks' samples are disjoint and together are the whole epoch (12 rows: 3 batches of 2 per rank)
    seen = [image_keys(torch.cat([b["image"] for b in rank])) for rank in batches]
    assert [len(s) for s in seen] == [6, 6] and not seen[0] & seen[1]
    everything = StreamingDataModule(str(tmp_path / "shards"))
    assert seen[0] | seen[1] == image_keys(everything.dataset("train")[i]["image"][None] for i in range(12))

    monkeypatch.setattr(vae_module, "reparameterize", noise_free)
    model = MultimodalVAE(everything.data_spec | {"modalities": ["image", "text", "audio"]}, **options)
    assert_same_gradients(one_process_gradients(model, tmp_path, [rank[0] for rank in batches]), tmp_path)


def test_captioner_on_a_manifest(tmp_path):
    manifest = write_corpus(tmp_path, 8)
    # captions of 1, 3 and 4 words, so the ranks' batches hold different numbers of tokens: the loss must
    # still give the gradient of the token mean over the global batch
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for index, row in enumerate(rows):
        row["caption"] = ["square", row["caption"], row["caption"].replace("a ", "a big ")][index % 3]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {"manifest": str(manifest), "modalities": ["image", "text"], "split_fractions": [1, 0, 0],
            "batch_size": 2, **DATA_OPTIONS}
    options = {"width": 16, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0, "warmup_steps": 0}
    batches = fit_two_processes(tmp_path, {"class_path": "mmgen_lightning.models.Captioner", "init_args": options},
                                {"class_path": "mmgen_lightning.datamodules.manifest.ManifestDataModule",
                                 "init_args": data})
    seen = [image_keys(torch.cat([b["image"] for b in rank])) for rank in batches]
    assert [len(s) for s in seen] == [4, 4] and not seen[0] & seen[1]
    tokens = [int(rank[0]["text_mask"].sum()) for rank in batches]
    assert tokens[0] != tokens[1], f"the ranks' first batches should differ in caption tokens, got {tokens}"
    model = Captioner(ManifestDataModule(**data).data_spec, **options)
    assert_same_gradients(one_process_gradients(model, tmp_path, [rank[0] for rank in batches]), tmp_path)

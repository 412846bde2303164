"""DDP with 2 CPU processes (gloo) on streaming shards: the ranks read disjoint samples that cover the
epoch, and the MultimodalVAE's synced gradients equal 1 process's on the same global batch."""

import torch

import mmgen_lightning.objectives.vae as vae_objective
from mmgen_lightning.cli import main
from mmgen_lightning.datamodules.streaming import StreamingDataModule
from mmgen_lightning.models.vae import MultimodalVAE
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus
from tests.ddp_checks import assert_same_gradients, fit_two_processes, image_keys, noise_free, one_process_gradients


def test_vae_on_streaming_shards(tmp_path, monkeypatch):
    manifest = write_corpus(tmp_path, 12)
    main(["shard", f"--data.manifest={manifest}", "--data.modalities=[image,text,audio]",
          "--data.split_fractions=[1,0,0]",
          *[f"--data.{k}={v}" for k, v in DATA_OPTIONS.items()], f"--out={tmp_path / 'shards'}", "--chunk_bytes=8KB"])
    options = {"network": {"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16}, "fusion": "poe"}
    batches = fit_two_processes(tmp_path, {"class_path": "mmgen_lightning.models.MultimodalVAE", "init_args": options},
                                {"class_path": "mmgen_lightning.datamodules.streaming.StreamingDataModule",
                                 "init_args": {"input_dir": str(tmp_path / "shards"), "batch_size": 2}})
    # the ranks' samples are disjoint and together are the whole epoch (12 rows: 3 batches of 2 per rank)
    seen = [image_keys(torch.cat([b["image"] for b in rank])) for rank in batches]
    assert [len(s) for s in seen] == [6, 6] and not seen[0] & seen[1]
    everything = StreamingDataModule(str(tmp_path / "shards"))
    assert seen[0] | seen[1] == image_keys(everything.dataset("train")[i]["image"][None] for i in range(12))

    monkeypatch.setattr(vae_objective, "reparameterize", noise_free)
    model = MultimodalVAE(everything.data_spec | {"modalities": ["image", "text", "audio"]}, **options)
    assert_same_gradients(one_process_gradients(model, tmp_path, [rank[0] for rank in batches]), tmp_path)

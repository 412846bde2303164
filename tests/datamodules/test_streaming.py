"""Streaming shards: `mmgen shard` writes what the manifest decodes to, counts skipped rows exactly,
ranks get disjoint samples that cover the epoch, a loader resumes mid-epoch, and a model trains on them."""

import json
import re

import lightning as L
import pytest
import torch
from litdata import StreamingDataLoader, StreamingDataset

from mmgen_lightning.cli import main
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.datamodules.streaming import ShardItem, StreamingDataModule
from mmgen_lightning.models.vae import MultimodalVAE
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus
from tests.datamodules.test_manifest import manifest_with, write_bad_files

SHARD_OPTIONS = [f"--data.{key}={value}" for key, value in DATA_OPTIONS.items()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    manifest = write_corpus(folder, 24)
    main(["shard", f"--data.manifest={manifest}", "--data.split_fractions=[0.75,0.25,0.0]", "--data.seed=2",
          *SHARD_OPTIONS, f"--out={folder / 'shards'}", "--chunk_bytes=20KB", "--workers=2"])
    main(["shard", f"--data.manifest={manifest}", "--data.modalities=[image,text]", *SHARD_OPTIONS,
          f"--out={folder / 'image_text'}"])
    return manifest, folder / "shards"


def test_shards_hold_exactly_what_the_manifest_decodes_to(shards):
    manifest, out = shards
    meta = json.loads((out / "mmgen.json").read_text())
    assert meta["splits"] == {"train": {"rows": 18, "written": 18, "skipped": 0},
                              "val": {"rows": 6, "written": 6, "skipped": 0},
                              "test": {"rows": 0, "written": 0, "skipped": 0}}
    assert len(list((out / "train").glob("chunk-*.bin"))) > 2  # several chunks, so ranks can split them
    direct = ManifestDataModule(str(manifest), split_fractions=(0.75, 0.25, 0.0), seed=2, **DATA_OPTIONS)
    streamed = StreamingDataModule(str(out))
    assert {**streamed.data_spec, "dataset": "manifest"} == direct.data_spec
    by_line = {row["line"]: index for index, row in enumerate(direct.rows["train"])}
    to_item = ShardItem(streamed.modalities, streamed.tokenizer)
    raw = StreamingDataset(str(out / "train"))
    for index in range(len(raw)):
        sample = raw[index]
        expected = direct.dataset("train")[by_line[sample["line"]]]
        item = to_item(sample)
        assert item.keys() == expected.keys()
        for key in item:
            assert torch.equal(item[key], expected[key]), (sample["line"], key)
    assert len(streamed.dataset("test")) == 0 and len(streamed.test_dataloader()) == 0
    with pytest.raises(ValueError, match=r"modalities: 'label' is not in the shards"):
        StreamingDataModule(str(out.parent / "image_text"), modalities=["image", "label"])


def test_bad_rows_are_skipped_and_counted_or_stop_the_conversion(tmp_path, capsys):
    write_corpus(tmp_path, 6)
    bad = write_bad_files(tmp_path)
    good = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k != "video"} for row in good] + [row for row, _, _ in bad.values()]
    manifest = manifest_with(tmp_path, rows, "mixed")
    common = [f"--data.manifest={manifest}", "--data.modalities=[image,text,audio]", *SHARD_OPTIONS]
    main(["shard", *common, "--data.on_error=skip", f"--out={tmp_path / 'skip'}"])
    meta = json.loads((tmp_path / "skip" / "mmgen.json").read_text())
    # 4 rows fail when the manifest is read, 3 when their files are decoded
    assert meta["splits"]["train"] == {"rows": 13, "written": 6, "skipped": 7}
    with pytest.raises(SystemExit) as stop:
        main(["shard", *common, f"--out={tmp_path / 'raise'}"])
    assert stop.value.code == 1
    assert re.search(r"^mmgen shard: error: .*mixed.jsonl line 7 \(.*files/nope.png\): image file not found",
                     capsys.readouterr().err, re.MULTILINE)
    assert not (tmp_path / "raise").exists()  # nothing half-written left behind
    with pytest.raises(SystemExit) as stop:  # the shards written above are not replaced unless asked
        main(["shard", *common, "--data.on_error=skip", f"--out={tmp_path / 'skip'}"])
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    main(["shard", *common, "--data.on_error=skip", f"--out={tmp_path / 'skip'}", "--overwrite"])
    assert json.loads((tmp_path / "skip" / "mmgen.json").read_text()) == meta


def lines_seen(out, world_size, rank, monkeypatch, epoch_batches=None, state=None, batch_size=2):
    """Lines one rank reads in one epoch of the train shards (litdata reads the rank from the environment)."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("GLOBAL_RANK", str(rank))
    dataset = StreamingDataset(str(out / "train"), shuffle=True, drop_last=True, seed=5)
    loader = StreamingDataLoader(dataset, batch_size=batch_size)
    if state is not None:
        loader.load_state_dict(state)
    lines = []
    for step, batch in enumerate(loader):
        lines += batch["line"].tolist()
        if epoch_batches is not None and step + 1 == epoch_batches:
            return lines, loader.state_dict()
    return lines, None


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_samples_that_cover_the_epoch(shards, monkeypatch, world_size):
    _, out = shards
    per_rank = [lines_seen(out, world_size, rank, monkeypatch)[0] for rank in range(world_size)]
    seen = [line for lines in per_rank for line in lines]
    assert len(seen) == len(set(seen))  # disjoint
    assert len({len(lines) for lines in per_rank}) == 1  # equal shares, so DDP ranks step together
    assert len(seen) == 18 - 18 % (world_size * 2) and set(seen) <= set(range(1, 25))


def test_a_loader_resumes_mid_epoch(shards, monkeypatch):
    _, out = shards
    full, _ = lines_seen(out, 1, 0, monkeypatch)
    first, state = lines_seen(out, 1, 0, monkeypatch, epoch_batches=3)
    rest, _ = lines_seen(out, 1, 0, monkeypatch, state=state)
    assert first + rest == full and len(full) == 18


def test_a_model_trains_from_shards(shards):
    _, out = shards
    dm = StreamingDataModule(str(out), modalities=["image", "text", "audio"], batch_size=3)
    torch.manual_seed(0)
    model = MultimodalVAE(dm.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", max_epochs=1, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 6 and torch.isfinite(trainer.callback_metrics["val/loss"])


def test_shards_smaller_than_one_batch_are_refused_before_training(shards):
    from mmgen_lightning.errors import UsageError

    _, out = shards
    dm = StreamingDataModule(str(out), modalities=["image", "text"], batch_size=64)
    model = MultimodalVAE(dm.data_spec, network={"latent_dim": 4, "width": 8, "text_width": 16})
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", max_epochs=1, limit_val_batches=0)
    with pytest.raises(UsageError, match="the train split has 18 rows, fewer than one batch of batch_size=64"):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 0


def test_limit_writes_the_first_rows_of_each_split_and_says_so(shards, tmp_path):
    manifest, _ = shards
    main(["shard", f"--data.manifest={manifest}", "--data.split_fractions=[0.75,0.25,0.0]", "--data.seed=2",
          "--data.modalities=[image,text]", *SHARD_OPTIONS, f"--out={tmp_path / 'first'}", "--limit=4"])
    meta = json.loads((tmp_path / "first" / "mmgen.json").read_text())
    assert meta["limit"] == 4 and meta["splits"] == {"train": {"rows": 18, "written": 4, "skipped": 0},
                                                     "val": {"rows": 6, "written": 4, "skipped": 0},
                                                     "test": {"rows": 0, "written": 0, "skipped": 0}}
    direct = ManifestDataModule(str(manifest), split_fractions=(0.75, 0.25, 0.0), seed=2, **DATA_OPTIONS)
    written = sorted(StreamingDataset(str(tmp_path / "first" / "train"))[i]["line"] for i in range(4))
    assert written == sorted(row["line"] for row in direct.rows["train"][:4])

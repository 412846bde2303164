"""Aligner: a tiny one learns (recall above chance on tiny Shapes), 2-process DDP with gathered negatives gives
the loss and gradients of one process on the global batch, checkpoints rebuild it alone, `mmgen retrieve` ranks
a manifest, and `mmgen evaluate --aligner` scores a generator on a manifest with no attributes; bad pairings
stop with one line naming both files."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from mmgen_lightning.cli import main
from mmgen_lightning.datamodules import ShapesDataModule
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.models.aligner import Aligner, gallery_recall
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.gan import ConditionalGAN
from tests.conftest import ToyDataModule, fit, fit_two_ranks_in_subprocess
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus

TINY = {"network": {"embed_dim": 16, "width": 32, "encoder_layers": 1, "text_layers": 1, "num_heads": 2, "n_mels": 16},
        "optimization": {"warmup_steps": 0}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_tiny_aligner_learns_text_image_retrieval_on_shapes():
    torch.manual_seed(0)
    data = ShapesDataModule(modalities=["image", "text"], image_size=16, train_size=1024, test_size=100,
                            batch_size=64)
    model = Aligner(data.data_spec, objective={"temperature": 0.2}, **TINY)  # a cooler start leaves the plateau sooner
    test = next(iter(DataLoader(data.dataset("test"), batch_size=100)))

    def recall() -> float:
        with torch.no_grad():
            return gallery_recall(model.embed(test, "text"), model.embed(test, "image"), 100, ks=(5,))[5]

    before = recall()
    fit(model, data, max_epochs=5, limit_val_batches=0)  # 80 steps
    after = recall()
    # chance: 5 of 100; the exact item is in the top 5 far more often once the space is learnt
    assert before < 0.15 and after > 0.5, (before, after)


def test_recall_agrees_with_a_hand_made_similarity():
    queries = torch.eye(3)
    candidates = torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0.8, 0.6]])  # queries 1 and 2 prefer each other's
    recalls = gallery_recall(queries, candidates, 3, ks=(1, 2))
    assert recalls[1] == pytest.approx(1 / 3) and recalls[2] == pytest.approx(1.0)
    relevant = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)  # 1 and 2 answer each other
    assert gallery_recall(queries, candidates, 3, ks=(1,), relevant=relevant)[1] == pytest.approx(1.0)


def test_encoders_come_from_the_modalities_and_keep_their_checkpoint_layout():
    from torch import nn

    from mmgen_lightning.models.aligner import AttentionPool
    from mmgen_lightning.models.layers.text import TextEncoder
    from mmgen_lightning.models.layers.token_encoders import (AudioTokenEncoder, ImageTokenEncoder,
                                                               VideoTokenEncoder)

    spec = {"modalities": ["image", "text", "audio", "video", "label"], "vocab_size": 12, "max_text_length": 6,
            "image_size": 16, "video_size": 32, "image_channels": 1, "num_frames": 2, "sample_rate": 8000,
            "audio_length": 2000, "num_classes": 3}
    model = Aligner(spec, **TINY)
    # the layout old checkpoints were saved with: token encoders pooled by a query; text and label pool themselves
    pooled = {"image": ImageTokenEncoder, "audio": AudioTokenEncoder, "video": VideoTokenEncoder}
    for name, kind in pooled.items():
        encoder = model.encoders[name]
        assert isinstance(encoder[0], kind) and isinstance(encoder[1], AttentionPool), name
    assert isinstance(model.encoders["text"], TextEncoder) and isinstance(model.encoders["label"], nn.Embedding)
    assert model.encoders["video"][0].grid == (2, 8, 8)  # 32-px frames (video_size), 4-px patches
    batch = {"image": torch.zeros(2, 1, 16, 16), "video": torch.zeros(2, 2, 1, 32, 32), "audio": torch.zeros(2, 2000),
             "text": torch.ones(2, 6, dtype=torch.long), "text_mask": torch.ones(2, 6, dtype=torch.bool),
             "label": torch.tensor([0, 2])}
    for name in spec["modalities"]:
        assert model.embed(batch, name).shape == (2, TINY["network"]["embed_dim"])


class RecordLossAndGradients(Callback):
    """Per rank: the initial weights, the first batch, its loss and the synced gradients of the first step."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), f"{self.folder}/initial_rank{trainer.global_rank}.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            torch.save({k: v.clone() for k, v in batch.items()}, f"{self.folder}/batch_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            torch.save(outputs["loss"].detach(), f"{self.folder}/loss_rank{trainer.global_rank}.pt")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None},
                       f"{self.folder}/grads_rank{trainer.global_rank}.pt")


def test_ddp_gathers_negatives_with_gradients_and_matches_one_process(tmp_path):
    options = {**TINY, "network": {**TINY["network"], "dropout": 0.0}}
    data = {"modalities": ["image", "text", "audio"], "size": 16, "batch_size": 4}
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "logger": False,
                    "enable_progress_bar": False, "enable_checkpointing": False, "limit_val_batches": 0,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "tests.models.test_aligner.RecordLossAndGradients",
                                   "init_args": {"folder": str(tmp_path)}}]},
        "model": {"class_path": "mmgen_lightning.models.aligner.Aligner", "init_args": options},
        "data": {"class_path": "tests.conftest.ToyDataModule", "init_args": data},
    }
    fit_two_ranks_in_subprocess(config, tmp_path)
    ranks = [{name: torch.load(tmp_path / f"{name}_rank{r}.pt", weights_only=True)
              for name in ("batch", "loss", "grads")} for r in (0, 1)]

    model = Aligner(ToyDataModule(**data).data_spec, **options)
    model.load_state_dict(torch.load(tmp_path / "initial_rank0.pt", weights_only=True))
    batch = {key: torch.cat([rank["batch"][key] for rank in ranks]) for key in ranks[0]["batch"]}
    loss = model.training_step(batch, 0)  # one process, the global batch of 8
    loss.backward()
    # each rank's loss is the mean over its own queries against all 8 candidates: their mean is the global loss
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ranks[0]["grads"].keys() == expected.keys() and len(expected) > 20
    total = torch.cat([g.flatten() for g in expected.values()]).norm()
    for name, grad in expected.items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        torch.testing.assert_close(ranks[0]["grads"][name], grad, atol=1e-6 * total.item(), rtol=1e-4, msg=name)


def fit_aligner(data, folder, steps: int = 2, **options) -> str:
    model = Aligner(data.data_spec, **{**TINY, **options})
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(folder),
                        callbacks=[ModelCheckpoint(dirpath=str(folder), save_last=True)])
    trainer.fit(model, datamodule=data)
    return str(folder / "last.ckpt")


def test_checkpoint_round_trip_and_generate_says_it_serves_nothing(tmp_path):
    data = ToyDataModule(modalities=["image", "text", "label"], size=16, batch_size=8)
    ckpt = fit_aligner(data, tmp_path)
    original = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt)  # weights_only=True, the checkpoint alone
    assert isinstance(model, Aligner) and model.modalities == ("image", "text", "label")
    batch = next(iter(DataLoader(data.dataset("val"), batch_size=8)))
    fresh = Aligner(data.data_spec, **TINY)
    fresh.load_state_dict(original["state_dict"])
    fresh.eval()
    for modality in model.modalities:
        torch.testing.assert_close(model.embed(batch, modality), fresh.embed(batch, modality))
    torch.testing.assert_close(model.embed_captions(["class two"]), model.embed(data.tokenizer.encode("class two"),
                                                                                "text"))
    with pytest.raises(ValueError, match="serves no direction"):
        model.generate({}, num_samples=1)


@pytest.mark.parametrize("options, message", [
    ({"network": {"width": 30, "num_heads": 4}}, r"network.width must be divisible by num_heads \(4\), got 30"),
    ({"network": {"depth": 2}}, r"network: unknown option\(s\) depth; allowed: embed_dim, width"),
    ({"objective": {"temperature": 0.001}}, r"objective.temperature must be > 0 with 1/temperature <= max_logit_scale "
                                            r"\(100.0\), got 0.001"),
    ({"optimization": {"betas": (0.9, 1.0)}}, r"optimization.betas must be two numbers in \[0, 1\)"),
    ({"validation": {"gallery_size": 1}}, r"validation.gallery_size must be >= 2, got 1"),
])
def test_each_option_group_checks_itself_and_names_the_field(options, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Aligner(ToyDataModule(modalities=["image", "text"]).data_spec, **options)


def test_the_optimiser_spares_the_scale_queries_positions_and_token_table_from_weight_decay():
    model = Aligner(ToyDataModule(modalities=["image", "text"]).data_spec, **TINY)
    decayed, spared = model.configure_optimizers()["optimizer"].param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    assert {"logit_scale", "encoders.image.1.query", "encoders.image.0.position", "encoders.text.embed.weight"} <= {
        names[id(p)] for p in spared["params"]}
    assert all(p.ndim >= 2 and not any(key in names[id(p)] for key in ("embed", "query", "norm"))
               for p in decayed["params"])
    assert decayed["weight_decay"] == 0.01 and model.config.optimization.schedule == "cosine"


@pytest.fixture(scope="module")
def manifest_files(tmp_path_factory):
    """A captioned manifest, an aligner (image, text) and a text->image GAN trained on it, an aligner of
    (text, audio), and the same manifest without captions."""
    folder = tmp_path_factory.mktemp("manifest")
    manifest = write_corpus(folder, 12)
    torch.manual_seed(0)
    options = {**DATA_OPTIONS, "split_fractions": (0.5, 0.25, 0.25), "batch_size": 4}
    data = ManifestDataModule(str(manifest), modalities=["image", "text"], **options)
    aligner = fit_aligner(data, folder / "aligner", steps=6)
    audio_data = ManifestDataModule(str(manifest), modalities=["text", "audio"], **options)
    audio_aligner = fit_aligner(audio_data, folder / "audio_aligner")
    gan = ConditionalGAN(data.data_spec, condition="text",
                         network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16})
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[ModelCheckpoint(dirpath=str(folder / "gan"), save_last=True)])
    trainer.fit(gan, datamodule=data)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    bare = folder / "no_captions.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "caption"}) + "\n" for row in rows))
    return {"manifest": manifest, "aligner": aligner, "audio_aligner": audio_aligner,
            "gan": str(folder / "gan" / "last.ckpt"), "bare": bare, "folder": folder}


def test_retrieve_ranks_the_manifest_by_cosine_and_writes_json_lines(manifest_files, tmp_path, capsys):
    out = tmp_path / "hits.jsonl"
    main(["retrieve", "--ckpt", manifest_files["aligner"], "--query-text", "a red square",
          "--index", str(manifest_files["manifest"]), "--top", "5", "--out", str(out)])
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # the scores are the cosines of the checkpoint's own embeddings of the query and each file
    model = load_generator(manifest_files["aligner"])
    data = ManifestDataModule(str(manifest_files["manifest"]), modalities=["image"], split_fractions=(1, 0, 0),
                              **DATA_OPTIONS)
    rows = data.rows["train"]
    images = torch.stack([data.dataset("train")[i]["image"] for i in range(len(rows))])
    expected = (model.embed({"image": images}, "image") @ model.embed_captions(["a red square"]).T)[:, 0]
    by_file = {str(row["image"]): expected[i].item() for i, row in enumerate(rows)}
    assert all(abs(by_file[r["file"]] - r["score"]) < 1e-4 for r in results)
    assert sorted(by_file.values(), reverse=True)[0] == pytest.approx(scores[0], abs=1e-4)
    assert "rank" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # never over the user's file
        main(["retrieve", "--ckpt", manifest_files["aligner"], "--query-text", "a red square",
              "--index", str(manifest_files["manifest"]), "--out", str(out)])
    assert "exists" in capsys.readouterr().err and len(out.read_text().splitlines()) == 5
    with pytest.raises(SystemExit):
        main(["retrieve", "--ckpt", manifest_files["aligner"], "--query-image", str(manifest_files["folder"] /
              "files" / "0.png"), "--index", str(manifest_files["bare"]), "--target", "text"])
    error = capsys.readouterr().err
    assert "no captions" in error and str(manifest_files["bare"]) in error and error.count("\n") == 1


def test_evaluate_with_an_aligner_scores_a_generator_on_a_manifest(manifest_files, tmp_path):
    out = tmp_path / "report.json"
    main(["evaluate", "--ckpt", manifest_files["gan"], "--aligner", manifest_files["aligner"], "--out", str(out)])
    report = json.loads(out.read_text())
    (row,) = report["alignment"]["rows"]
    assert row["direction"] == "text->image" and row["samples"] == 3 and row["pool"] == 3
    assert -1 <= row["alignment"] <= 1 and -1 <= row["real_data"] <= 1
    assert 0 <= row["r_precision"] <= 1 and 0 <= row["real_data_r_precision"] <= 1
    assert "R-precision" in out.with_suffix(".md").read_text()
    # the aligner's own report: recall in both directions
    main(["evaluate", "--ckpt", manifest_files["aligner"], "--out", str(tmp_path / "aligner.json")])
    rows = {r["direction"]: r for r in json.loads((tmp_path / "aligner.json").read_text())["retrieval"]}
    assert set(rows) == {"image->text", "text->image"} and rows["text->image"]["gallery"] == 3
    assert rows["text->image"]["recall@10"] == 1.0 and 0 <= rows["text->image"]["recall@1"] <= 1


def test_bad_pairings_stop_with_one_line_naming_both(manifest_files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", manifest_files["gan"], "--aligner", manifest_files["audio_aligner"],
              "--out", str(tmp_path / "r.json")])
    message = capsys.readouterr().err
    assert manifest_files["audio_aligner"] in message and manifest_files["gan"] in message
    assert "target 'image'" in message and message.count("\n") == 1
    config = tmp_path / "bare.yaml"
    config.write_text(json.dumps({"data": {"class_path": "mmgen_lightning.datamodules.manifest.ManifestDataModule",
                                           "init_args": {"manifest": str(manifest_files["bare"]),
                                                         **DATA_OPTIONS}}}))
    with pytest.raises(SystemExit):
        main(["evaluate", "--ckpt", manifest_files["gan"], "--aligner", manifest_files["aligner"],
              "--config", str(config), "--out", str(tmp_path / "r.json")])
    message = capsys.readouterr().err
    assert "no captions" in message and str(manifest_files["bare"]) in message and message.count("\n") == 1
    # an aligner on a manifest without captions says so when it is built
    bare = ManifestDataModule(str(manifest_files["bare"]), **DATA_OPTIONS)
    with pytest.raises(ValueError, match="no captions"):
        Aligner(bare.data_spec, modalities=["image", "text"])
    assert not (tmp_path / "r.json").exists()

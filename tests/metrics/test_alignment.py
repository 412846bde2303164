"""The ``reference`` scores `mmgen evaluate --aligner` gives image targets: distribution scores and
nearest-training-image distances in the aligner's image embedding, each beside the real held-out images'."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from mmgen_lightning.cli import main
from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.metrics.alignment import (DISTRIBUTION_KEYS, NEAREST_K, alignment_markdown, alignment_scores,
                                               distribution_scores, nearest_cosine_distance, nearest_pixel_mse,
                                               train_reference)
from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.gan import ConditionalGAN
from tests.conftest import ToyDataModule, fit
from tests.datamodules.manifest_corpus import DATA_OPTIONS, write_corpus

TINY = {"network": {"embed_dim": 16, "width": 32, "encoder_layers": 1, "text_layers": 1, "num_heads": 2},
        "optimization": {"warmup_steps": 0}}
SCORES = {*DISTRIBUTION_KEYS, "nearest_cosine_distance", "nearest_cosine_distance_p5", "nearest_pixel_mse",
          "nearest_pixel_mse_p5", "closer_than_median_real"}


class FixedImages:
    """A stand-in generator: each ``generate`` call returns the next ``num_samples`` of ``images``, or uniform
    noise in [-1, 1] when ``images`` is None."""

    device = torch.device("cpu")

    def __init__(self, images: torch.Tensor | None = None) -> None:
        self.images, self.served = images, 0

    def generate(self, conditions, num_samples, to, **sampling):
        if self.images is None:
            return {to: torch.rand(num_samples, 1, 16, 16) * 2 - 1}
        self.served += num_samples
        return {to: self.images[self.served - num_samples:self.served]}


@pytest.fixture(scope="module")
def toy():
    """Toy data (64 items a split, each image noisy, so no two are equal) and an aligner trained on it."""
    torch.manual_seed(0)
    data = ToyDataModule(modalities=["image", "text"], size=64, batch_size=16)
    aligner = Aligner(data.data_spec, **TINY)
    fit(aligner, data, max_steps=20, limit_val_batches=0)
    return data, aligner.eval()


def reference_of(generator, toy, **options) -> dict:
    data, aligner = toy
    (row,) = alignment_scores(generator, aligner, data, ["text->image"], batch_size=16, **options)
    assert set(row["reference"]["samples"]) == set(row["reference"]["real_data"]) == SCORES
    return row["reference"]


def test_a_generator_that_copies_training_images_is_caught_and_real_held_out_images_are_not(toy):
    data, _ = toy
    train = torch.stack([data.dataset("train")[i]["image"] for i in range(64)])
    reference = reference_of(FixedImages(train), toy)
    copies, real = reference["samples"], reference["real_data"]
    assert reference["train_images"] == 64
    assert copies["closer_than_median_real"] == 1.0
    assert copies["nearest_cosine_distance"] < 1e-5 and copies["nearest_pixel_mse"] < 1e-5
    # new draws from the data: half are closer than their own median, and none is a copy
    assert 0.4 <= real["closer_than_median_real"] <= 0.5
    assert real["nearest_pixel_mse_p5"] > 1e-3
    assert real["nearest_cosine_distance"] > 100 * copies["nearest_cosine_distance"]


def test_noise_scores_worse_than_the_real_held_out_images(toy):
    reference = reference_of(FixedImages(None), toy, reference_limit=40)
    noise, real = reference["samples"], reference["real_data"]
    assert reference["train_images"] == 40
    assert noise["fid"] > 10 * real["fid"] and noise["kid"] > real["kid"] + 0.01
    assert noise["precision"] < 0.2 and real["precision"] > 0.8 and noise["recall"] < real["recall"]
    assert noise["nearest_pixel_mse"] > 10 * real["nearest_pixel_mse"]
    assert noise["closer_than_median_real"] < 0.2


def test_the_train_reference_is_a_seeded_subset_of_the_train_images(toy):
    data, aligner = toy
    reference = train_reference(aligner, data, limit=10, batch_size=4, seed=3)
    assert reference.features.shape == (10, 16) and reference.pixels.shape == (10, 256)
    torch.testing.assert_close(reference.features.norm(dim=1), torch.ones(10))
    train = torch.stack([data.dataset("train")[i]["image"] for i in range(64)]).flatten(1)
    # every row is one of the train images, all different, and the same seed draws the same ones
    assert ((reference.pixels[:, None] - train[None]).abs().amax(2).amin(1) == 0).all()
    assert len({tuple(row.tolist()) for row in reference.pixels}) == 10
    torch.testing.assert_close(train_reference(aligner, data, limit=10, batch_size=7, seed=3).pixels, reference.pixels)
    assert not torch.equal(train_reference(aligner, data, limit=10, seed=4).pixels, reference.pixels)


def test_nearest_distances_agree_with_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    images, reference = torch.rand(7, 2, 3, 3, generator=generator), torch.rand(11, 18, generator=generator)
    expected = torch.tensor([min(((image.flatten() - r) ** 2).mean().item() for r in reference) for image in images])
    torch.testing.assert_close(nearest_pixel_mse(images, reference, chunk=3), expected)
    queries = torch.nn.functional.normalize(torch.randn(7, 5, generator=generator), dim=1)
    keys = torch.nn.functional.normalize(torch.randn(11, 5, generator=generator), dim=1)
    expected = torch.tensor([min(1 - torch.dot(q, k).item() for k in keys) for q in queries])
    torch.testing.assert_close(nearest_cosine_distance(queries, keys, chunk=2), expected)
    assert distribution_scores(keys, queries[:NEAREST_K]) == dict.fromkeys(DISTRIBUTION_KEYS)


@pytest.fixture(scope="module")
def manifest_run(tmp_path_factory):
    """A captioned manifest (12 train, 6 test rows), an aligner and a text->image GAN trained on it."""
    folder = tmp_path_factory.mktemp("manifest")
    manifest = write_corpus(folder, 24)
    torch.manual_seed(0)
    data = ManifestDataModule(str(manifest), modalities=["image", "text"], split_fractions=(0.5, 0.25, 0.25),
                              batch_size=4, **DATA_OPTIONS)
    models = {"aligner": Aligner(data.data_spec, **TINY),
              "gan": ConditionalGAN(data.data_spec, condition="text",
                                    network={"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16})}
    for name, model in models.items():
        L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=str(folder / name), save_last=True)]
                  ).fit(model, datamodule=data)
    return {name: str(folder / name / "last.ckpt") for name in models}


def test_evaluate_writes_the_reference_scores_beside_the_real_data(manifest_run, tmp_path):
    out = tmp_path / "report.json"
    main(["evaluate", "--ckpt", manifest_run["gan"], "--aligner", manifest_run["aligner"], "--reference-limit", "10",
          "--out", str(out)])
    (row,) = json.loads(out.read_text())["alignment"]["rows"]
    assert row["samples"] == 6 and row["reference"]["train_images"] == 10
    for side in ("samples", "real_data"):
        scores = row["reference"][side]
        assert set(scores) == SCORES and 0 <= scores["precision"] <= 1 and scores["fid"] >= 0
    table = out.with_suffix(".md").read_text()
    assert "Against 10 training images" in table and "closer than median real" in table
    real = row["reference"]["real_data"]
    assert (f"| text->image | real data | {real['fid']:.4f} | {real['kid']:.4f} ± {real['kid_std']:.4f} | "
            f"{real['precision']:.4f} |") in table
    # the markdown of a row with too few images says why its distribution scores are missing
    few = {**row, "reference": {**row["reference"], "samples": {**row["reference"]["samples"],
                                                                **dict.fromkeys(DISTRIBUTION_KEYS)}}}
    assert f"more than {NEAREST_K} images" in alignment_markdown({"aligner": "a.ckpt", "rows": [few]})


@pytest.mark.parametrize("flags, message", [
    (["--reference-limit", "0"], "--reference-limit must be >= 1, got 0"),
    (["--reference_limit", "10"], "--reference-limit sizes the --aligner scores"),
])
def test_a_bad_reference_limit_is_one_line_naming_the_flag(manifest_run, tmp_path, capsys, flags, message):
    aligner = ["--aligner", manifest_run["aligner"]] if "0" in flags else []
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "--ckpt", manifest_run["gan"], *aligner, *flags, "--out", str(tmp_path / "r.json")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and message in error and error.count("\n") == 1
    assert not (tmp_path / "r.json").exists()

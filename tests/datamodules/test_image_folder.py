"""ImageFolderDataModule: torchvision's one-subfolder-per-class layout, captions from folder names, splits, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import ImageFolderDataModule
from mmgen_lightning.datamodules.image_folder import folder_caption
from mmgen_lightning.errors import InputError

#: class folder -> RGB of its pictures
CLASSES = {"red_apple": (220, 20, 20), "blue-sky": (30, 60, 230), "green_pear": (20, 200, 40)}


def make_folder(root, per_class=6, sizes=((40, 30), (24, 24))):
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            picture = Image.new("RGB", sizes[k % len(sizes)], colour)
            picture.save(root / name / f"{k}.{'png' if k % 2 else 'jpg'}")
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "pictures")


def test_labels_and_captions_come_from_the_folder_names(folder):
    datamodule = ImageFolderDataModule(str(folder), modalities=["image", "text", "label"], image_size=16,
                                       split_fractions=(0.5, 0.25, 0.25), batch_size=4)
    assert datamodule.classes == ["blue-sky", "green_pear", "red_apple"]  # sorted, as ImageFolder numbers them
    assert datamodule.captions == ["blue sky", "green pear", "red apple"]
    seen = 0
    for split in ("train", "val", "test"):
        dataset = datamodule.dataset(split)
        for index in range(len(dataset)):
            item = dataset[index]
            label = int(item["label"])
            assert datamodule.tokenizer.decode(item["text"][None]) == [datamodule.captions[label]]
            assert item["image"].shape == (3, 16, 16)
            colour = torch.tensor(CLASSES[datamodule.classes[label]]) / 127.5 - 1
            assert torch.allclose(item["image"].mean((1, 2)), colour, atol=0.05)  # JPEG is lossy
            seen += 1
    assert seen == 18
    batch = next(iter(datamodule.train_dataloader()))
    check_batch(batch)
    assert datamodule.spec.num_classes == 3 and datamodule.spec.image_size == 16


def test_splits_are_deterministic_and_disjoint(folder):
    first = ImageFolderDataModule(str(folder), split_fractions=(0.5, 0.25, 0.25))
    again = ImageFolderDataModule(str(folder), split_fractions=(0.5, 0.25, 0.25))
    other = ImageFolderDataModule(str(folder), split_fractions=(0.5, 0.25, 0.25), seed=1)
    assert np.array_equal(first.split_of, again.split_of) and not np.array_equal(first.split_of, other.split_of)
    assert np.bincount(first.split_of).tolist() == [9, 5, 4]
    files = [{first.samples[i][0] for i in np.flatnonzero(first.split_of == k)} for k in range(3)]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])


def test_grey_images(folder):
    datamodule = ImageFolderDataModule(str(folder), modalities=["image"], image_size=8, image_channels=1)
    assert datamodule.dataset("train")[0]["image"].shape == (1, 8, 8)


def test_folder_captions():
    assert folder_caption("red_apple") == "red apple" and folder_caption("man-technologist  medium") == \
        "man technologist medium"


def test_bad_folders_are_one_line(tmp_path):
    with pytest.raises(InputError, match="image folder not found"):
        ImageFolderDataModule(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty has no class subfolders.*ROOT/red_apple/1\.png"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    root = make_folder(tmp_path / "some")
    (root / "pear").mkdir()
    (root / "pear" / "notes.txt").write_text("not a picture")
    with pytest.raises(InputError, match=r"some/pear holds no image file \(extensions: \.jpg"):
        ImageFolderDataModule(str(root))


def test_a_broken_image_names_its_file(folder):
    (folder / "red_apple" / "0.jpg").write_bytes(b"not a jpeg")
    datamodule = ImageFolderDataModule(str(folder), split_fractions=(1.0, 0.0, 0.0))
    dataset = datamodule.dataset("train")
    with pytest.raises(InputError, match=r"red_apple/0\.jpg: cannot decode the image"):
        for index in range(len(dataset)):
            dataset[index]

"""HFTableDataModule on tables the real ``datasets`` library writes: save_to_disk (Dataset and DatasetDict) and
parquet; images, captions and labels read back offline; missing columns and bad cells named."""

import datasets
import pytest
import torch
from PIL import Image

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import HFTableDataModule
from mmgen_lightning.errors import InputError

COLOURS = {"a red square": (220, 20, 20), "a blue square": (30, 60, 230), "a green square": (20, 200, 40)}
FEATURES = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                              "label": datasets.ClassLabel(names=["red", "blue", "green", "unused"])})


def table(copies=4):
    rows = [(text, colour, label) for _ in range(copies) for label, (text, colour) in enumerate(COLOURS.items())]
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", (20, 12), colour) for _, colour, _ in rows],
                                       "caption": [text for text, _, _ in rows],
                                       "label": [label for _, _, label in rows]}, features=FEATURES)


def check_rows(datamodule, split):
    dataset = datamodule.dataset(split)
    for index in range(len(dataset)):
        item = dataset[index]
        text = datamodule.tokenizer.decode(item["text"][None])[0]
        colour = torch.tensor(COLOURS[text]) / 127.5 - 1
        assert item["image"].shape == (3, 8, 8) and torch.allclose(item["image"].mean((1, 2)), colour, atol=0.01)
        assert int(item["label"]) == list(COLOURS).index(text)
    return len(dataset)


@pytest.mark.parametrize("form", ["save_to_disk", "parquet"])
def test_a_single_table_is_read_and_split(tmp_path, form):
    path = tmp_path / "table"
    if form == "save_to_disk":
        table().save_to_disk(str(path))
    else:
        path = tmp_path / "table.parquet"
        table().to_parquet(str(path))
    datamodule = HFTableDataModule(str(path), modalities=["image", "text", "label"], label_column="label", image_size=8,
                                   split_fractions=(0.5, 0.25, 0.25), batch_size=2)
    assert sum(check_rows(datamodule, split) for split in ("train", "val", "test")) == 12
    assert datamodule.spec.num_classes == 4  # the ClassLabel's classes, seen or not
    check_batch(next(iter(datamodule.train_dataloader())))
    again = HFTableDataModule(str(path), label_column="label", split_fractions=(0.5, 0.25, 0.25))
    assert all((again.tables[s][1] == datamodule.tables[s][1]).all() for s in ("train", "val", "test"))


def test_a_dataset_dict_keeps_its_splits(tmp_path):
    datasets.DatasetDict({"train": table(3), "validation": table(1)}).save_to_disk(str(tmp_path / "dict"))
    datamodule = HFTableDataModule(str(tmp_path / "dict"), modalities=["image", "text", "label"], label_column="label",
                                   image_size=8)
    assert [check_rows(datamodule, split) for split in ("train", "val", "test")] == [9, 3, 0]


def test_missing_columns_and_bad_cells_are_named(tmp_path):
    table().save_to_disk(str(tmp_path / "table"))
    with pytest.raises(InputError, match=r"has no column 'text'; its columns: image, caption, label "
                                         r"\(HFTableDataModule caption_column\)"):
        HFTableDataModule(str(tmp_path / "table"), caption_column="text")
    with pytest.raises(InputError, match="has no column 'picture'.*image_column"):
        HFTableDataModule(str(tmp_path / "table"), image_column="picture")
    with pytest.raises(ValueError, match="label_column: name the table's column"):
        HFTableDataModule(str(tmp_path / "table"), modalities=["image", "label"])
    with pytest.raises(InputError, match="table not found"):
        HFTableDataModule(str(tmp_path / "absent"))
    empty = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 2, "caption": ["fine", ""]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "caption": datasets.Value("string")}))
    empty.save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(InputError, match=r"row 1: column 'caption' holds '', not a caption"):
        HFTableDataModule(str(tmp_path / "empty"), split_fractions=(1.0, 0.0, 0.0)).setup()


def test_image_paths_relative_to_the_table(tmp_path):
    (tmp_path / "pictures").mkdir()
    Image.new("RGB", (10, 10), (220, 20, 20)).save(tmp_path / "pictures" / "red.png")
    datasets.Dataset.from_dict({"image": ["red.png", "missing.png"], "caption": ["a red square", "a red square"]}) \
        .to_parquet(str(tmp_path / "pictures" / "table.parquet"))
    datamodule = HFTableDataModule(str(tmp_path / "pictures" / "table.parquet"), image_size=8,
                                   split_fractions=(1.0, 0.0, 0.0))
    dataset = datamodule.dataset("train")
    images = {}
    for index in range(len(dataset)):
        row = int(dataset.rows[index])
        if row == 0:
            images[row] = dataset[index]["image"]
        else:
            with pytest.raises(InputError, match="row 1: column 'image' is not a readable image"):
                dataset[index]
    assert torch.allclose(images[0].mean((1, 2)), torch.tensor([220, 20, 20]) / 127.5 - 1, atol=0.01)

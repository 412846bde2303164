"""EmojiDataModule: CLDR names and their attributes, held-out (figure, tone) pairs, the render cache, bad input.

Only a few figures are rendered (32 px); the full catalogue is read, not rendered."""

import collections
import shutil
import sys

import numpy as np
import pytest
import torch

from mmgen_lightning.batch import check_batch
from mmgen_lightning.datamodules import EmojiDataModule
from mmgen_lightning.datamodules import emoji as emoji_module
from mmgen_lightning.datamodules.emoji import TONES, default_svg_dir, describe_name, parse_caption
from mmgen_lightning.errors import InputError
from mmgen_lightning.tokenizer import CaptionTokenizer

FIGURES = ["man technologist", "woman technologist", "technologist", "vampire", "man vampire", "person walking",
           "thumbs up", "red apple", "flag: Japan", "keycap: 7"]
ALL = ["image", "text", "label"]


def make(tmp_path, **options):
    options = {"modalities": ALL, "image_size": 32, "figures": FIGURES, "heldout_share": 0.4,
               "cache_dir": str(tmp_path / "cache"), "batch_size": 4, **options}
    return EmojiDataModule(**options)


@pytest.fixture(scope="module")
def emoji(tmp_path_factory):
    datamodule = make(tmp_path_factory.mktemp("emoji"))
    datamodule.setup()
    return datamodule


def pairs(datamodule, split):
    attributes = datamodule.dataset(split).tensors["attributes"]
    return {(datamodule.figures[f], t) for f, t, _ in attributes.tolist()}


def test_names_become_cldr_captions_and_attributes():
    item = describe_name("1F468-1F3FD-200D-1F4BB", ":man_technologist_medium_skin_tone:")
    assert (item.caption, item.figure, TONES[item.tone], item.gender) == (
        "man technologist: medium skin tone", "man technologist", "medium", 1)
    two = describe_name("1F469-1F3FB-200D-1F91D-200D-1F468-1F3FF", ":woman_and_man_holding_hands_light_skin_tone_dark_skin_tone:")
    assert two.caption == "woman and man holding hands: light skin tone, dark skin tone"
    assert (TONES[two.tone], two.gender, two.tones) == ("mixed", 3, (1, 5))
    assert describe_name("1F1EF-1F1F5", ":Japan:").caption == "flag: Japan"
    assert describe_name("1F3F4-E0067-E0062-E0073-E0063-E0074-E007F", ":Scotland:").caption == "flag: Scotland"
    assert describe_name("1F3F4-200D-2620-FE0F", ":pirate_flag:").caption == "pirate flag"
    assert describe_name("0037-FE0F-20E3", ":keycap_7:").caption == "keycap: 7"
    apple = describe_name("1F34E", ":red_apple:")
    assert (apple.caption, apple.tone, apple.gender) == ("red apple", 0, 0)


def test_full_catalogue_holds_out_one_tone_of_a_fifth_of_the_toned_figures(tmp_path):
    full = EmojiDataModule(cache_dir=str(tmp_path))
    toned, held = full.toned_figures(), full.heldout_pairs()
    assert len(full.items) > 3900 and len(full.figures) > 1800 and len(toned) > 300
    assert len(held) == round(0.2 * len(toned)) and set(held) <= set(toned)
    assert sorted(collections.Counter(held.values())) == [1, 2, 3, 4, 5]
    assert max(collections.Counter(held.values()).values()) - min(collections.Counter(held.values()).values()) <= 1
    assert EmojiDataModule(cache_dir=str(tmp_path), seed=1).heldout_pairs() != held
    assert not list(tmp_path.iterdir())  # reading the catalogue renders nothing


def test_heldout_pairs_are_never_trained_on_but_their_figure_and_tone_are(emoji):
    held = emoji.heldout_pairs()
    assert len(held) == 3
    train = pairs(emoji, "train")
    heldout_items = emoji.dataset("heldout").tensors["attributes"].tolist()
    assert heldout_items and {emoji.figures[f] for f, _, _ in heldout_items} == set(held)
    for figure, tone in held.items():
        assert (figure, tone) in pairs(emoji, "heldout") and (figure, tone) not in train
        assert any(f == figure for f, _ in train) and any(t == tone for f, t in train if f != figure)
    for split in ("val", "test"):
        assert not pairs(emoji, split) & set(held.items())
    # every item is in exactly one split
    assert sum(len(emoji.dataset(s)) for s in ("train", "val", "test", "heldout")) == len(emoji.items) == 45


def test_captions_state_the_attributes(emoji):
    for split in ("train", "val", "test", "heldout"):
        tensors = emoji.dataset(split).tensors
        for text, attributes in zip(emoji.tokenizer.decode(tensors["text"]), tensors["attributes"].tolist()):
            parsed = parse_caption(text, emoji.figures)
            assert [parsed["figure"], parsed["tone"], parsed["gender"]] == attributes, text
    assert torch.equal(emoji.dataset("train").tensors["label"], emoji.dataset("train").tensors["attributes"][:, 0])


def test_batches_follow_the_contract_on_white(emoji):
    batch = next(iter(emoji.train_dataloader()))
    check_batch(batch)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert (batch["image"][:, :, 0, 0] == 1).all()  # white corners: emoji are drawn on white
    spec = emoji.spec
    assert (spec.image_size, spec.image_channels, spec.num_classes) == (32, 3, len(emoji.figures))
    assert spec.attribute_names == ["figure", "tone", "gender"] and spec.attribute_sizes == [len(emoji.figures), 7, 4]
    assert spec.vocab_size == emoji.tokenizer.vocab_size
    held = next(iter(emoji.heldout_dataloader()))
    assert held["image"].shape[1:] == (3, 32, 32)


def test_tones_of_a_figure_are_drawn_differently(emoji):
    images = torch.from_numpy(emoji.images()).float()
    tones = {item.tone: index for index, item in enumerate(emoji.items) if item.figure == "man vampire"}
    assert set(tones) == {0, 1, 2, 3, 4, 5}
    variants = images[[tones[t] for t in (1, 2, 3, 4, 5)]]
    skin = (variants.amax(0) - variants.amin(0)).sum(0) > 30  # the pixels the tone changes
    assert 0 < skin.float().mean() < 0.5
    for a in range(5):
        for b in range(a):
            assert ((variants[a] - variants[b]).abs().sum(0) > 30).float().mean() > 0.01, (a, b)
    assert variants[0][:, skin].mean() - variants[4][:, skin].mean() > 60  # light skin is lighter than dark


def test_same_seed_same_data_and_the_cache_is_reused(emoji, tmp_path, monkeypatch):
    files = list(emoji.cache_dir.iterdir())
    assert [f.name for f in files] == [emoji.cache_path().name]
    monkeypatch.setattr(emoji_module, "render_svgs", lambda *a: pytest.fail("rendered again"))
    again = make(emoji.cache_dir.parent)
    again.setup()
    for split in ("train", "val", "test", "heldout"):
        for key, value in emoji.dataset(split).tensors.items():
            assert torch.equal(value, again.dataset(split).tensors[key]), (split, key)
    other = make(tmp_path, seed=3)
    assert not np.array_equal(other.split_of, emoji.split_of)
    assert make(tmp_path, image_size=48).cache_path() != emoji.cache_path()


def test_a_render_that_fails_midway_names_the_svg_and_caches_nothing(tmp_path):
    source, _ = default_svg_dir()
    folder = tmp_path / "svg"
    folder.mkdir()
    for code in ("1F34E", "1F34F", "1F350"):  # red apple, green apple, pear
        shutil.copy(source / f"{code}.svg", folder)
    (folder / "1F351.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><g></svg>")  # peach, broken
    datamodule = EmojiDataModule(svg_dir=str(folder), image_size=32, cache_dir=str(tmp_path / "cache"),
                                 split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"1F351\.svg: the SVG cannot be rendered"):
        datamodule.setup()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    (folder / "1F351.svg").unlink()
    datamodule = EmojiDataModule(svg_dir=str(folder), image_size=32, cache_dir=str(tmp_path / "cache"),
                                 split_fractions=(1.0, 0.0, 0.0))
    datamodule.setup()
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"] and len(datamodule.dataset("train")) == 3


def test_missing_renderer_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "resvg_py", None)  # import resvg_py now raises ImportError
    datamodule = make(tmp_path)
    with pytest.raises(InputError, match="needs resvg-py to render OpenMoji's SVGs.*pip install resvg-py") as error:
        datamodule.setup()
    assert "\n" not in str(error.value) and not (tmp_path / "cache").exists()


def test_a_name_the_tokenizer_cannot_read_is_refused(tmp_path):
    path = tmp_path / "tokenizer.json"
    CaptionTokenizer.train(["red apple", "man technologist"]).save(path)
    with pytest.raises(InputError, match=r"\.svg: caption '.*' cannot be read: .*unknown token") as error:
        make(tmp_path, modalities=["text"], tokenizer_path=str(path)).setup()
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="cannot be read: the caption is .* tokens long"):
        make(tmp_path, modalities=["text"], max_text_length=5).setup()


def test_bad_options_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="figures: no emoji is named 'smiling cat'"):
        make(tmp_path, figures=["smiling cat"])
    with pytest.raises(ValueError, match="image_size: 100 is not supported"):
        make(tmp_path, image_size=100)
    with pytest.raises(ValueError, match="split: unknown 'holdout'; allowed: train, val, test, heldout"):
        make(tmp_path).dataset("holdout")

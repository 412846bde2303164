"""The skin-tone reader of metrics/emoji_tone.py, on painted palettes and on OpenMoji's own renders."""

import pytest
import torch

from mmgen_lightning.metrics.emoji_tone import TONE_COLOURS, read_tones, tone_correct, tone_counts


def painted(areas: dict[int, int], size: int = 32) -> torch.Tensor:
    """A white ``1,3,size,size`` image with ``areas[tone]`` pixels of each tone's colour (1-5), in [-1, 1]."""
    image = torch.full((size * size, 3), 255.0)
    start = 0
    for tone, count in areas.items():
        image[start:start + count] = torch.tensor(TONE_COLOURS[tone - 1], dtype=torch.float32)
        start += count
    return (image.T.reshape(1, 3, size, size) / 127.5 - 1)


def test_the_skin_is_the_lightest_tone_present_not_the_most_counted():
    # light skin under medium-dark hair that covers more pixels: light
    assert read_tones(painted({1: 100, 4: 200})).item() == 1
    # a dark speck beside medium skin is not the skin; a lighter speck below the share is ignored too
    assert read_tones(painted({3: 200, 5: 30})).item() == 3
    assert read_tones(painted({1: 20, 3: 200})).item() == 3
    assert read_tones(painted({})).item() == 0  # no skin colour at all: none
    # colours a little off the palette (a sample's) still count; far off ones do not
    near = painted({2: 150}) + 10 / 127.5
    assert read_tones(near).item() == 2
    assert tone_counts(painted({2: 150}) + 60 / 127.5).sum() == 0


def test_two_tones_are_right_only_when_both_are_drawn():
    both = painted({1: 120, 5: 100})
    assert tone_correct(both, [(1, 5)]).item()
    assert not tone_correct(both, [(2, 5)]).item()
    assert not tone_correct(painted({1: 200}), [(1, 5)]).item()
    assert tone_correct(torch.cat([painted({4: 90}), painted({})]), [(4,), ()]).tolist() == [True, True]


def test_openmoji_renders_read_as_their_modifier():
    pytest.importorskip("resvg_py")
    pytest.importorskip("emoji")
    from mmgen_lightning.datamodules.emoji import default_svg_dir, render_svgs

    folder, _ = default_svg_dir()
    # thumbs up and girl in the five tones (the girl's hair is darker than her skin), and a yellow one
    stems = [f"{base}-{modifier:X}" for base in ("1F44D", "1F467") for modifier in range(0x1F3FB, 0x1F400)]
    images = torch.from_numpy(render_svgs([folder / f"{stem}.svg" for stem in stems + ["1F44D"]], 64))
    read = read_tones(images.float() / 127.5 - 1)
    assert read.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 0]

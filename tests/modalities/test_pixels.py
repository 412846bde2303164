"""Preprocessing shared by images and videos (mmgen_lightning/modalities/pixels.py)."""

from __future__ import annotations

import torch

from mmgen_lightning.modalities import random_shift, resize_frames, to_uint8


def test_random_shift_moves_each_sample_by_its_own_offset_and_fills_with_background():
    images = torch.zeros(64, 1, 5, 5)
    images[:, :, 2, 2] = 1.0  # one bright pixel in the middle
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 5, where % 5
    assert ((rows - 2).abs() <= 1).all() and ((cols - 2).abs() <= 1).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 4  # offsets differ between samples
    assert torch.equal(random_shift(images, 0), images)
    # a video's frames move together; the global RNG draws the same offsets as an explicit generator
    video = torch.randn(8, 3, 1, 6, 6)
    torch.manual_seed(3)
    moved = random_shift(video, 2)
    assert torch.equal(moved, random_shift(video, 2, torch.Generator().manual_seed(3)))
    padded = torch.nn.functional.pad(video, (2,) * 4, value=-1.0)
    for i in range(8):
        assert any(torch.equal(moved[i], padded[i, :, :, dy:dy + 6, dx:dx + 6]) for dy in range(5) for dx in range(5))


def test_random_shift_on_the_global_rng_keeps_one_bright_pixel_within_bounds():
    torch.manual_seed(0)
    images = torch.full((64, 1, 8, 8), -1.0)
    images[:, :, 3, 4] = 1.0  # one bright pixel per image
    shifted = random_shift(images, 2)
    positions = (shifted[:, 0] == 1.0).flatten(1).float().argmax(1)
    rows, cols = positions // 8, positions % 8
    assert ((shifted == 1.0).flatten(1).sum(1) == 1).all() and (shifted[shifted != 1.0] == -1.0).all()
    assert ((rows - 3).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets differ between images
    assert torch.equal(random_shift(images, 0), images)


def test_resize_frames_resizes_every_frame_of_every_clip_alike():
    clips = torch.rand(2, 3, 1, 8, 8)
    resized = resize_frames(clips, 4)
    assert resized.shape == (2, 3, 1, 4, 4)
    assert torch.equal(resized[1, 2], resize_frames(clips[1, 2][None], 4)[0])
    assert resize_frames(clips, 8) is clips


def test_to_uint8_maps_the_range_onto_bytes_and_drops_a_single_channel():
    image = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 4)
    assert to_uint8(image).tolist() == [[0, 128, 255, 255]]  # 127.5 rounds to even, 2 is clamped
    assert to_uint8(torch.zeros(3, 2, 5)).shape == (2, 5, 3)

"""Draw the README's sample figure from a checkpoint: text -> image rows and image -> text pairs.

    python benchmarks/readme_figure.py --ckpt runs/quickstart/checkpoints/last.ckpt --out docs/quickstart_samples.png
    python benchmarks/readme_figure.py --ckpt runs/flow_shapes/checkpoints/last.ckpt --out docs/flow_shapes_samples.png \
        --captions "a large red circle on the left" ...   # a text -> image model: rows only
    python benchmarks/readme_figure.py --ckpt runs/flow_scenes/checkpoints/last.ckpt --out docs/scenes_samples.png --scenes

``--scenes``: eight samples for each of ``SCENE_CAPTIONS`` (one of each caption kind, then two that name
(colour, shape) pairs held out of training), labelled "held out" where they do.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from mmgen_lightning.datamodules.scenes import HELDOUT_PAIRS, parse_scene_caption
from mmgen_lightning.modalities import to_uint8 as _to_uint8
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

SCALE = 3
#: the scenes figure's rows: single, relation, binding, counting, then two with held-out pairs (blue circle,
#: red triangle; yellow square), which no training image shows
SCENE_CAPTIONS = ("a large red circle", "a green square to the left of a blue triangle",
                  "a yellow circle and a purple square", "three cyan diamonds", "a blue circle above a red triangle",
                  "two yellow squares")


def scene_label(caption: str) -> str:
    """The caption, marked when it names a (colour, shape) pair held out of training."""
    return caption + ("  (held out)" if parse_scene_caption(caption).pairs & set(HELDOUT_PAIRS) else "")


def tile(image: torch.Tensor, scale: int = SCALE) -> Image.Image:
    """A ``3,S,S`` image in [-1, 1] as a picture ``scale`` times as wide (nearest: the pixels stay visible)."""
    picture = Image.fromarray(_to_uint8(image)).convert("RGB")
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--captions", nargs="+", default=None, help="text -> image rows (default: val captions)")
    parser.add_argument("--per_row", type=int, default=None, help="samples per caption (default 6; 8 with --scenes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", action="store_true", help="the scenes figure: SCENE_CAPTIONS, eight samples each")
    args = parser.parse_args()
    if args.scenes:
        args.captions = args.captions or list(SCENE_CAPTIONS)
    args.per_row = args.per_row or (8 if args.scenes else 6)
    torch.manual_seed(args.seed)
    model = load_generator(args.ckpt)
    datamodule = load_datamodule(args.ckpt)
    val = datamodule.dataset("val")
    captions = args.captions or model.tokenizer.decode(torch.stack([val[i]["text"] for i in range(4)]))
    rows = []
    for caption in captions:
        images = model.generate(model.tokenizer.encode([caption]), args.per_row, to="image")["image"]
        rows.append((scene_label(caption) if args.scenes else caption, [tile(image) for image in images]))
    captions_too = model.serves(("image",), "text")  # the image -> text block only for models that caption
    references = torch.stack([val[i]["image"] for i in range(4, 4 + args.per_row)])
    generated = model.tokenizer.decode(model.generate({"image": references}, len(references), to="text")["text"]) \
        if captions_too else []
    side = rows[0][1][0].width
    label_width, pad = 330, 6
    width = label_width + args.per_row * (side + pad)
    height = (len(rows) + (1 if captions_too else 0)) * (side + pad) + (3 * 18 + 40 if captions_too else 24)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), "text -> image", fill="black")
    y = 18
    for caption, images in rows:
        draw.text((pad, y + side // 2 - 6), caption, fill="black")
        for column, image in enumerate(images):
            canvas.paste(image, (label_width + column * (side + pad), y))
        y += side + pad
    if captions_too:
        draw.text((pad, y + 4), "image -> text", fill="black")
        y += 22
    for column, (image, _) in enumerate(zip(references, generated)):
        x = label_width + column * (side + pad)
        canvas.paste(tile(image), (x, y))
    for line, column in enumerate(range(len(generated))):
        draw.text((pad, y + line * 14), f"{column + 1}: {generated[column]}", fill="black")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

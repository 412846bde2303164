"""Draw the family pages' pictures: a digits recipe trained from scratch, its outputs beside real test data.

    python benchmarks/family_figures.py configs/gan/digits.yaml configs/vae/digits.yaml \
        configs/captioner/digits.yaml configs/aligner/digits.yaml [--skip-fit]
    python benchmarks/family_figures.py configs/vqvae/digits.yaml configs/tokens/digits.yaml   # stage 1, then 2

Each recipe is fitted as ``mmgen fit`` fits it, one after the other with one torch thread
(``recipe_run.fit_from_scratch``; ``--skip-fit`` reads its existing ``last.ckpt``), and drawn by what it
models into ``docs/<family>_<dataset>_<kind>.png``:

* ``samples``, label, text or audio -> image (the first the model draws from): one row per digit, named by its
  condition (the label, or the caption or clip of the first test item of the digit), ``--num`` samples, then
  ``--real`` real test images of the digit;
* ``captions``, image -> text: one real test image of each digit with the caption the model wrote (green when
  it names the image's digit, red when not) and the true caption;
* ``retrieval``, an Aligner: each of ``QUERIES`` with its top 5 of the test images, framed green where the
  image shows the digit the query names, red where not;
* a VQVAE recipe is fitted only as the tokens recipe's stage 1 and drawn not at all.

Prints the optimizer steps and epochs each checkpoint reached (a GAN counts both players' steps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from flow_quality import whole_split
from PIL import Image, ImageDraw, ImageFont
from readme_figure import tile
from recipe_run import checkpoint_dir, fit_from_scratch

from mmgen_lightning.datamodules.digits import parse_caption
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.models.aligner import Aligner
from mmgen_lightning.models.base import load_generator
from mmgen_lightning.models.vqvae import VQVAE

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ("a handwritten three", "the digit 7", "number five", "a picture of the number zero")
#: an image picture's condition: the first of these the model draws images from
SOURCES = ("label", "text", "audio")
FONT = ImageFont.load_default(size=14)
PAD, LINE = 6, 18
RIGHT, WRONG = (30, 150, 60), (200, 40, 40)


def first_of_each_digit(test: dict[str, torch.Tensor]) -> list[int]:
    """The index of the first test item of each digit, 0 to 9."""
    digits = test["attributes"][:, 0].tolist()
    return [digits.index(digit) for digit in range(10)]


def text_width(texts) -> int:
    """Pixels the widest of ``texts`` takes, with a margin each side."""
    return int(max(FONT.getlength(text) for text in texts)) + 2 * PAD


def framed(image: torch.Tensor, colour: tuple[int, int, int]) -> Image.Image:
    picture = tile(image)
    frame = Image.new("RGB", (picture.width + 6, picture.height + 6), colour)
    frame.paste(picture, (3, 3))
    return frame


def draw_rows(rows: list[tuple[str, list[Image.Image]]], headers: list[tuple[int, str]], gap_after: int | None = None
              ) -> Image.Image:
    """Rows of tiles, each named at its left; ``headers`` are ``(column, text)`` over the first row; a wider
    gap after column ``gap_after`` sets the real images apart."""
    side = rows[0][1][0].width
    left = text_width(label for label, _ in rows)
    x = [left + column * (side + PAD) + (3 * PAD if gap_after is not None and column > gap_after else 0)
         for column in range(max(len(tiles) for _, tiles in rows))]
    width = max(x[-1] + side, *(x[column] + FONT.getlength(text) for column, text in headers)) + PAD
    canvas = Image.new("RGB", (int(width), LINE + PAD + len(rows) * (side + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, text in headers:
        draw.text((x[column], PAD // 2), text, fill="black", font=FONT)
    for row, (label, tiles) in enumerate(rows):
        y = LINE + PAD + row * (side + PAD)
        draw.text((PAD, y + side // 2 - LINE // 2), label, fill="black", font=FONT)
        for column, picture in enumerate(tiles):
            canvas.paste(picture, (x[column], y))
    return canvas


def image_samples(model, test: dict[str, torch.Tensor], num: int, real: int) -> Image.Image:
    """Per digit: ``num`` images drawn from the condition of its first test item, then ``real`` test images."""
    source = next(m for m in SOURCES if model.serves((m,), "image"))
    rows = []
    for digit, index in enumerate(first_of_each_digit(test)):
        conditions = {key: test[key][index:index + 1] for key in get_modality(source).keys()}
        name = (model.tokenizer.decode(conditions["text"])[0] if source == "text"
                else f"label {digit}" if source == "label" else f"test clip {index} (a {digit})")
        samples = model.generate(conditions, num, to="image")["image"]
        same = test["image"][test["attributes"][:, 0] == digit][:real]
        rows.append((name, [tile(image) for image in [*samples, *same]]))
    return draw_rows(rows, [(0, f"{source} -> image: {num} samples"), (num, "real (test)")], gap_after=num - 1)


def captions(model, test: dict[str, torch.Tensor]) -> Image.Image:
    """The first test image of each digit with the caption the model writes for it and its true caption."""
    indices = first_of_each_digit(test)
    images = test["image"][indices]
    written = model.tokenizer.decode(model.generate({"image": images}, len(images), to="text")["text"])
    true = model.tokenizer.decode(test["text"][indices])
    side, per_row = tile(images[0]).width, 5
    width = text_width([*(f"model: {text}" for text in written), *(f"true: {text}" for text in true)])
    height = side + 2 * LINE + 2 * PAD
    canvas = Image.new("RGB", (per_row * width, LINE + (len(images) + per_row - 1) // per_row * height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD // 2), "image -> text: real test images, the model's caption and the true one",
              fill="black", font=FONT)
    for digit, (image, mine, theirs) in enumerate(zip(images, written, true)):
        x, y = (digit % per_row) * width + PAD, LINE + (digit // per_row) * height + PAD
        canvas.paste(tile(image), (x, y))
        right = (parse_caption(mine) or {}).get("digit") == digit
        draw.text((x, y + side + 2), f"model: {mine}", fill=RIGHT if right else WRONG, font=FONT)
        draw.text((x, y + side + 2 + LINE), f"true: {theirs}", fill="gray", font=FONT)
    return canvas


@torch.no_grad()
def retrieval(model, test: dict[str, torch.Tensor]) -> Image.Image:
    """Each of ``QUERIES`` with the 5 test images nearest to it in the Aligner's space, framed by their digit."""
    gallery = model.embed({"image": test["image"]}, "image")  # N,D unit vectors
    rows = []
    for query in QUERIES:
        top = (model.embed_captions([query]) @ gallery.T)[0].topk(5).indices
        digit = parse_caption(query)["digit"]
        rows.append((query, [framed(test["image"][i], RIGHT if test["attributes"][i, 0] == digit else WRONG)
                             for i in top]))
    return draw_rows(rows, [(0, f"text -> image: top 5 of the {len(gallery)} test images "
                                "(green: the digit asked for, red: another)")])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="+", help="digits recipes, fitted and drawn in this order")
    parser.add_argument("--skip-fit", action="store_true", help="draw from each recipe's existing last.ckpt")
    parser.add_argument("--num", type=int, default=8, help="samples per row of an image picture")
    parser.add_argument("--real", type=int, default=3, help="real test images per row of an image picture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for config_path in args.configs:
        config = yaml.safe_load((ROOT / config_path).read_text())
        if not args.skip_fit:
            fit_from_scratch(config_path, config, [])
        ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
        stored = torch.load(ckpt, map_location="cpu", weights_only=True)
        print(f"{config_path}: {stored['global_step']} optimizer steps, last epoch {stored['epoch']}", flush=True)
        model = load_generator(ckpt)
        if isinstance(model, VQVAE):
            continue
        test = whole_split(load_datamodule(ckpt, ROOT / config_path), "test")
        torch.manual_seed(args.seed)
        if isinstance(model, Aligner):
            kind, picture = "retrieval", retrieval(model, test)
        elif any(model.serves((source,), "image") for source in SOURCES):
            kind, picture = "samples", image_samples(model, test, args.num, args.real)
        else:
            kind, picture = "captions", captions(model, test)
        out = ROOT / "docs" / f"{Path(config_path).parent.name}_{Path(config_path).stem}_{kind}.png"
        picture.save(out)
        print(f"wrote {out.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()

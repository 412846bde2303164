"""Draw an emoji text -> image checkpoint's samples beside the real renders (the README's and the flow
page's emoji picture).

    python benchmarks/emoji_figure.py --ckpt runs/flow_emoji64/checkpoints/last.ckpt --out docs/flow_emoji64_samples.png
    python benchmarks/emoji_figure.py --ckpt runs/flow_emoji128/checkpoints/last.ckpt --out docs/flow_emoji128_samples.png

Rows: ``--seen`` training names, then ``--heldout`` names of held-out (figure, skin tone) pairs (the figure
and the tone each seen in training, never together), each with ``--num`` samples and the real render;
then ``--free`` names that are no emoji's, drawn with no real image beside them. Each image is enlarged
``--scale`` times (by default to about 192 px: 64 px images 3 times, 128 px ones not at all).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from family_figures import draw_rows
from PIL import Image
from readme_figure import tile

from mmgen_lightning.datamodules.rendered import RENDERED_SPLITS
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

SEEN = ("red apple", "rocket", "fire", "woman: dark skin tone", "woman technologist: light skin tone", "flag: Japan",
        "grinning face")
FREE = ("a smiling cat",)


def rows_for(model, datamodule, names: list[str], split: str, num: int, scale: int) -> list[tuple[str, list]]:
    """For each name: ``num`` samples and the real render of the item of ``split`` with that caption."""
    index = {datamodule.items[i].caption: i for i in np.flatnonzero(
        datamodule.split_of == RENDERED_SPLITS.index(split))}
    images = datamodule.images()
    rows = []
    for name in names:
        conditions = datamodule.tokenizer.encode([name])
        samples = model.generate(conditions, num, to="image")["image"]
        real = [torch.from_numpy(images[index[name]]).float() / 127.5 - 1] if name in index else []
        rows.append((f"{name}{' (held out)' if split == 'heldout' else ''}", [tile(x, scale) for x in [*samples, *real]]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seen", nargs="*", default=list(SEEN), help="training names")
    parser.add_argument("--heldout", type=int, default=3, help="held-out names, the first of the split")
    parser.add_argument("--free", nargs="*", default=list(FREE), help="names no emoji has")
    parser.add_argument("--num", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=None, help="enlargement (default: 192 // image_size, at least 1)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load_generator(args.ckpt).eval()
    datamodule = load_datamodule(args.ckpt)
    scale = args.scale or max(1, 192 // datamodule.image_size)
    in_heldout = np.flatnonzero(datamodule.split_of == RENDERED_SPLITS.index("heldout"))
    heldout = [datamodule.items[i].caption for i in in_heldout][:args.heldout]
    with torch.no_grad():
        rows = (rows_for(model, datamodule, args.seen, "train", args.num, scale)
                + rows_for(model, datamodule, heldout, "heldout", args.num, scale)
                + rows_for(model, datamodule, args.free, "train", args.num, scale))
    steps = torch.load(args.ckpt, map_location="cpu", weights_only=True).get("global_step")
    picture = draw_rows(rows, [(0, f"text -> image: {args.num} samples ({steps} steps)"), (args.num, "real")],
                        gap_after=args.num - 1)
    # a 256-colour palette: flat emoji lose nothing visible, and the committed PNG stays under a megabyte
    picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

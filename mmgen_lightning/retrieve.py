"""``mmgen retrieve``: rank a manifest's files (or captions) by their cosine to a query in an Aligner's space.

    mmgen retrieve --ckpt ALIGNER --query_text "a red circle" --index data.jsonl --top 5 [--out hits.jsonl]
    mmgen retrieve --ckpt ALIGNER --query_image photo.png --index data.jsonl --target text

The index is a manifest in the format of ``ManifestDataModule`` (JSONL or CSV; paths relative to its
folder); its files are read by the same readers training uses, sized by the aligner's checkpoint.
Prints a table of the top ``K`` (rank, score, manifest line, file or caption) and, with ``--out``,
writes them as JSON lines ``{"rank", "score", "line", "file" | "caption"}`` (never over an existing file
unless ``--overwrite``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import default_collate

from mmgen_lightning.errors import ArgumentParser, CheckpointError, UsageError
from mmgen_lightning.modalities import get_modality

QUERY_KINDS = ("text", "image", "audio")
#: what of each row is ranked when --target is not given: the first of these the aligner embeds
TARGETS = ("image", "video", "audio", "text")


def parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmgen retrieve", description=(
        "Rank the files (or captions) of a manifest by their similarity to a query, in the space of an Aligner "
        "checkpoint; prints the top K and optionally writes them as JSON lines."))
    parser.add_argument("--ckpt", required=True, help="Aligner checkpoint written by `mmgen fit`")
    query = parser.add_mutually_exclusive_group(required=True)
    # underscores as every mmgen command spells its flags; the dashed spelling is kept as an alias
    query.add_argument("--query_text", "--query-text", dest="query_text", help="a caption")
    query.add_argument("--query_image", "--query-image", dest="query_image", help="an image file")
    query.add_argument("--query_audio", "--query-audio", dest="query_audio", help="a WAV/FLAC file")
    parser.add_argument("--index", required=True, help="manifest (.jsonl/.csv) whose rows are ranked")
    parser.add_argument("--target", default=None, choices=["image", "text", "audio", "video"],
                        help="what of each row is ranked (default: the first file column the aligner embeds that is "
                             "not the query's kind; text: the captions)")
    parser.add_argument("--top", type=int, default=10, help="how many results (K)")
    parser.add_argument("--out", default=None, help="write the results here as JSON lines")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=64,
                        help="rows embedded at once")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def load_aligner(path: str | Path, map_location: str = "cpu"):
    """An :class:`~mmgen_lightning.models.aligner.Aligner` from its checkpoint, or a ``ValueError`` naming
    the file when the checkpoint holds another family."""
    from mmgen_lightning.models.aligner import Aligner
    from mmgen_lightning.models.base import load_generator

    model = load_generator(path, map_location=map_location)
    if not isinstance(model, Aligner):
        raise CheckpointError(f"a {type(model).__name__} checkpoint, not an Aligner", str(path),
                              "train one with `mmgen fit --config configs/aligner/<dataset>.yaml`")
    return model


def embed_query(model, args) -> tuple[str, torch.Tensor]:
    """``(kind, 1,D)``: the query's modality and its unit vector."""
    kind = next(k for k in QUERY_KINDS if getattr(args, f"query_{k}") is not None)
    if kind not in model.modalities:
        raise ValueError(f"--query_{kind}: {args.ckpt} aligns {', '.join(model.modalities)}, not {kind}")
    if not get_modality(kind).from_files:  # a caption
        return kind, model.embed_captions([getattr(args, f"query_{kind}")])
    path = Path(getattr(args, f"query_{kind}"))
    if not path.is_file():
        raise FileNotFoundError(f"--query_{kind}: file not found: {path}")
    try:  # the reader training uses
        value = get_modality(kind).read(path, model.data_spec)
    except (ValueError, OSError) as error:
        raise ValueError(f"--query_{kind} {path}: {error}") from error
    with torch.no_grad():
        return kind, model.embed({kind: value.unsqueeze(0).to(model.device)}, kind)


def index_rows(model, manifest: Path, target: str | None, query_kind: str):
    """``(target, dataset, rows)``: the manifest read as a ``ManifestDataModule`` sized by the aligner, every
    row in one list whatever its split."""
    from mmgen_lightning.datamodules.manifest import (COLUMNS, ManifestDataModule, ManifestDataset, given_modalities,
                                                      read_manifest)

    raw = read_manifest(manifest)
    columns = {key for _, row in raw for key in row}
    has = given_modalities(columns)
    if target is None:
        choices = [m for m in TARGETS if m in has and m in model.modalities and m != query_kind]
        if not choices:
            raise ValueError(f"--index {manifest}: no column the aligner embeds ({', '.join(model.modalities)}) "
                             f"besides the query's {query_kind}; columns: {', '.join(sorted(columns))}")
        target = choices[0]
    if target not in model.modalities:
        raise ValueError(f"--target {target}: the aligner embeds {', '.join(model.modalities)}, not {target}")
    if target not in has:
        raise ValueError(f"--index {manifest}: the manifest has {get_modality(target).missing_from_manifest()} to rank")
    spec = model.data_spec
    sizes = {"image_size": spec.get("image_size", 32), "image_channels": spec.get("image_channels", 3),
             "video_size": spec.get("video_size"), "num_frames": spec.get("num_frames", 8),
             "sample_rate": spec.get("sample_rate", 16000)}
    if "audio_length" in spec:
        sizes["audio_seconds"] = spec["audio_length"] / sizes["sample_rate"]
    data = ManifestDataModule(str(manifest), modalities=[target], split_fractions=(1.0, 0.0, 0.0),
                              ignore_columns=sorted(columns - set(COLUMNS)), tokenizer_path=None, **sizes)
    rows = [row for split in ("train", "val", "test") for row in data.rows[split]]
    return target, ManifestDataset(data, rows), rows


@torch.no_grad()
def rank(model, query: torch.Tensor, target: str, dataset, rows, batch_size: int) -> list[tuple[float, int]]:
    """``(score, row index)`` of every row, best first."""
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = range(start, min(start + batch_size, len(rows)))
        if not get_modality(target).from_files:  # captions, read with the aligner's tokenizer
            candidates = model.embed_captions([rows[i][target] for i in chunk])
        else:
            batch = default_collate([dataset.decode(i) for i in chunk])
            candidates = model.embed({k: v.to(model.device) for k, v in batch.items()}, target)
        scores.append((candidates @ query.T)[:, 0].cpu())
    scores = torch.cat(scores)
    order = torch.argsort(scores, descending=True, stable=True)
    return [(scores[i].item(), int(i)) for i in order]


def main(argv: Sequence[str] | None = None) -> None:
    """Errors are raised for ``cli.main`` to report as one line (:mod:`mmgen_lightning.errors`)."""
    args = parser().parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        raise UsageError("--top and --batch_size must be >= 1", f"--top {args.top}, --batch_size {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists", "--out", "pass --overwrite to replace it, or give another path")
    model = load_aligner(args.ckpt, map_location=args.device).to(args.device)
    kind, query = embed_query(model, args)
    target, dataset, rows = index_rows(model, Path(args.index), args.target, kind)
    ranked = rank(model, query, target, dataset, rows, args.batch_size)[: args.top]
    results = []
    for position, (score, index) in enumerate(ranked, start=1):
        row = rows[index]
        what = {"file": str(row[target])} if get_modality(target).from_files else {"caption": row[target]}
        results.append({"rank": position, "score": round(score, 6), "line": row["line"], **what})
    print(f"{'rank':>4}  {'score':>7}  {'line':>5}  {target}")
    for result in results:
        print(f"{result['rank']:4d}  {result['score']:7.4f}  {result['line']:5d}  "
              f"{result.get('file', result.get('caption'))}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(result) + "\n" for result in results))
        print(f"wrote {len(results)} results to {out}")

"""Retrieval: rank a manifest's files (or captions) by their cosine to a query in an Aligner's space.

    mmgen retrieve --ckpt ALIGNER --query_text "a red circle" --index data.jsonl --top 5 [--out hits.jsonl]
    mmgen retrieve --ckpt ALIGNER --query_image photo.png --index data.jsonl --target text

The index is a manifest in the format of ``ManifestDataModule`` (JSONL or CSV; paths relative to its
folder); its files are read by the same readers training uses, sized by the aligner's checkpoint.
:func:`retrieve` returns the top ``K`` as ``{"rank", "score", "line", "file" | "caption"}``; the command
(``cli.py``) prints them as a table and writes them as JSON lines with ``--out``. A caption query is read
by the aligner's tokenizer, with the warnings ``mmgen generate`` gives about words it will not read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from mmgen_lightning.errors import CheckpointError, InputError, UsageError
from mmgen_lightning.modalities import get_modality
from mmgen_lightning.service import warn_unread_caption

#: what of each row is ranked when --target is not given: the first of these the aligner embeds
TARGETS = ("image", "video", "audio", "text")


def embed_query(model, kind: str, query: str) -> torch.Tensor:
    """``1,D``: the unit vector of a caption (``kind`` text) or of a file (image, audio)."""
    if kind not in model.modalities:
        raise UsageError(f"the aligner aligns {', '.join(model.modalities)}, not {kind}", f"--query_{kind}",
                         "give a query of one of those kinds")
    if not get_modality(kind).from_files:  # a caption
        if model.tokenizer is None:
            raise CheckpointError("the aligner carries no tokenizer, so it cannot read a caption", f"--query_{kind}",
                                  "query with an image or audio file, or give an aligner fitted with captions")
        if model.config.network.text_encoder_path is None:  # a pretrained encoder reads every word itself
            warn_unread_caption("retrieve", f"--query_{kind}", model.tokenizer, query)
        return model.embed_captions([query])
    path = Path(query)
    try:  # the reader training uses
        value = get_modality(kind).read(path, model.data_spec)
    except (ValueError, OSError) as error:
        raise InputError(str(error), f"--query_{kind} {path}", f"give a readable, finite {kind} file") from error
    with torch.no_grad():
        return model.embed({kind: value.unsqueeze(0).to(model.device)}, kind)


def index_rows(model, manifest: Path, target: str | None, query_kind: str):
    """``(target, dataset, rows)``: the manifest read as a ``ManifestDataModule`` sized by the aligner, every
    row in one list whatever its split."""
    from mmgen_lightning.datamodules.manifest import (COLUMNS, ManifestDataModule, ManifestDataset, given_modalities,
                                                      iter_manifest)

    columns, count = set(), 0
    for _, row in iter_manifest(manifest):
        columns.update(row)
        count += 1
    if not count:
        raise InputError("the index has no rows", f"--index {manifest}", "give a manifest with one row per file")
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
    rows = data.rows["train"]  # split_fractions (1, 0, 0): every row, unless the manifest names splits
    if any(data.rows[split] for split in ("val", "test")):
        rows = [row for split in ("train", "val", "test") for row in data.rows[split]]
    return target, ManifestDataset(data, rows), rows


@torch.no_grad()
def rank(model, query: torch.Tensor, target: str, dataset, rows, batch_size: int,
         top: int | None = None) -> list[tuple[float, int]]:
    """``(score, row index)`` of the ``top`` best rows (``None``: every row), best first."""
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
    order = torch.argsort(scores, descending=True, stable=True)[:top]
    return [(scores[i].item(), int(i)) for i in order]


def retrieve(ckpt: str | Path, kind: str, query: str, index: str | Path, target: str | None = None, top: int = 10,
             batch_size: int = 64, device: str = "cpu") -> tuple[str, list[dict]]:
    """``(target, results)``: the ``top`` rows of the manifest ``index`` nearest to the query (a caption when
    ``kind`` is text, else a file path), best first, as ``{"rank", "score", "line", "file" | "caption"}``."""
    from mmgen_lightning.models.aligner import load_aligner  # the families load only when a command runs

    model = load_aligner(ckpt, map_location=device).to(device)
    vector = embed_query(model, kind, query)
    target, dataset, rows = index_rows(model, Path(index), target, kind)
    results = []
    for position, (score, row_index) in enumerate(rank(model, vector, target, dataset, rows, batch_size, top), 1):
        row = rows[row_index]
        what = {"file": str(row[target])} if get_modality(target).from_files else {"caption": row[target]}
        results.append({"rank": position, "score": round(score, 6), "line": row["line"], **what})
    return target, results

"""Write generated tensors to files (``.png``, ``.txt``, ``.wav``, ``.gif``) and ``manifest.jsonl``.

Each sample is written by its modality (``Modality.write``, with ``Modality.extension``); the files a
user gives as conditions are read by ``Modality.read``, the reader training uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mmgen_lightning.modalities import get_modality, to_uint8



def write_samples(samples: Mapping[str, Tensor], to: str, out_dir: str | Path, conditions: Sequence[dict[str, Any]],
                  seed: int | None, spec: Mapping[str, Any] | None = None, tokenizer: Any = None,
                  start_index: int = 0) -> list[dict[str, Any]]:
    """Write one file per sample of modality ``to`` and append one manifest row per sample.

    ``conditions[i]`` is the JSON-able description of sample ``i``'s condition; ``spec`` gives the sizes
    a file needs (``sample_rate`` of audio) and ``tokenizer`` decodes captions.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modality, values = get_modality(to), samples[to]
    rows = []
    with open(out_dir / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for offset in range(values.shape[0]):
            name = f"{start_index + offset:05d}_{to}{modality.extension}"
            row: dict[str, Any] = {"file": name, "to": to, "condition": conditions[offset], "seed": seed}
            row.update(modality.write(values[offset], out_dir / name, spec, tokenizer=tokenizer))
            manifest.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows

"""Do the aligner's reference-free scores agree with the attribute judges? Over generator checkpoints of
differing quality (one run's checkpoints at several steps), each is scored on the same test items by
the judges (coherence: every compared attribute right) and by an Aligner (alignment = mean cosine of
condition and sample; R-precision among 100), and the rank correlation (Spearman) across checkpoints
is reported.

    python benchmarks/alignment_vs_judges.py --checkpoints runs/gan_shapes/steps \
        --aligner runs/aligner_shapes/checkpoints/last.ckpt --config configs/gan/shapes.yaml

The checkpoints come from a generator run that saved them every N steps, for example
``benchmarks/gan_quality.py`` with ``--fit-args --trainer.callbacks+=ModelCheckpoint ...`` (see the
JSON's ``command``). Writes benchmarks/results/aligner_vs_judges.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torchmetrics.functional import spearman_corrcoef

from mmgen_lightning.metrics.alignment import alignment_scores
from mmgen_lightning.metrics.evaluator import coherence
from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.aligner import load_aligner
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", required=True, help="folder of generator checkpoints (*.ckpt)")
    parser.add_argument("--aligner", required=True, help="Aligner checkpoint")
    parser.add_argument("--config", default=None, help="config whose data section rebuilds the datamodule")
    parser.add_argument("--limit", type=int, default=500, help="test items scored per checkpoint")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "aligner_vs_judges.json"))
    parser.add_argument("--note", default="", help="how the checkpoints were made (goes into the JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(Path(args.checkpoints).glob("*.ckpt"), key=lambda p: os.path.getmtime(p))
    if len(paths) < 3:
        raise SystemExit(f"{args.checkpoints}: need at least 3 checkpoints, found {len(paths)}")
    aligner = load_aligner(args.aligner)
    rows = []
    for path in paths:
        started = time.time()
        model = load_generator(path)
        datamodule = load_datamodule(path, args.config)
        direction = f"{model.condition_modalities[0]}->{model.output_modalities[0]}"
        target = model.output_modalities[0]
        judges = {target: get_judge(datamodule, target)}
        judged = coherence(model, datamodule, direction, judges, limit=args.limit, batch_size=100)
        (aligned,) = alignment_scores(model, aligner, datamodule, [direction], limit=args.limit, batch_size=100)
        stored = torch.load(path, map_location="cpu", weights_only=True)
        rows.append({"checkpoint": path.name, "generator_steps": (stored.get("gan_steps") or {}).get("generator"),
                     "global_step": stored.get("global_step"), "direction": direction,
                     "judge_coherence": judged["accuracy"],
                     **{k: v for k, v in judged.items() if k.startswith("accuracy_")},
                     "judge_real_data": judged["real_data"], **{k: aligned[k] for k in (
                         "alignment", "real_data", "r_precision", "real_data_r_precision", "pool", "samples")},
                     "seconds": round(time.time() - started, 1)})
        print(json.dumps(rows[-1]))
    coherence_values = torch.tensor([r["judge_coherence"] for r in rows], dtype=torch.float64)
    report = {"command": "OMP_NUM_THREADS=1 python benchmarks/alignment_vs_judges.py --checkpoints "
                         f"{args.checkpoints} --aligner {args.aligner}"
                         + (f" --config {args.config}" if args.config else "") + f" --limit {args.limit}",
              "note": args.note, "checkpoints": len(rows),
              "spearman_alignment_vs_judge_coherence": spearman_corrcoef(
                  torch.tensor([r["alignment"] for r in rows], dtype=torch.float64), coherence_values).item(),
              "spearman_r_precision_vs_judge_coherence": spearman_corrcoef(
                  torch.tensor([r["r_precision"] for r in rows], dtype=torch.float64), coherence_values).item(),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| checkpoint | generator steps | judge coherence | alignment | R-precision |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['generator_steps']} | {r['judge_coherence']:.3f} | {r['alignment']:.3f} | "
              f"{r['r_precision']:.3f} |")
    print(f"Spearman: alignment {report['spearman_alignment_vs_judge_coherence']:.3f}, "
          f"R-precision {report['spearman_r_precision_vs_judge_coherence']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

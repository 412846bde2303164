"""Train a Notes recipe within its wall-clock budget, then measure it both ways on the test split and on the
held-out (instrument, octave) pairs, beside the same measurement of the real renders.

    python benchmarks/notes_quality.py --config configs/flow/notes.yaml [--skip-fit]
    python benchmarks/notes_quality.py --config configs/captioner/notes.yaml [--skip-fit]

text -> audio (FlowMatching): every caption of the split is given once (seeded); each generated clip's
pitch is read from its spectrum (:func:`~mmgen_lightning.metrics.pitch.read_pitch`) and must lie within a
semitone of the asked MIDI pitch, and the audio judge trained on the real training renders
(:func:`~mmgen_lightning.metrics.judges.get_judge`) must read the asked family (instrument and loudness
are reported too). The real renders of the same captions, read the same way, are the ceiling: the judge
never heard a held-out pair, so its reading of their real renders is lower than on the test split.

audio -> text (Captioner): each real clip gets one greedy caption, parsed by the datamodule's caption
grammar (:func:`~mmgen_lightning.datamodules.notes.parse_caption`); reported is the share naming the right
family, instrument, pitch (the note and its octave) and loudness.

Writes benchmarks/results/notes_<family>.json (``flow``, ``captioner``) with the command, the steps the
training reached and the machine's load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml
from recipe_run import checkpoint_dir, fit_from_scratch
from torch.utils.data import DataLoader

from mmgen_lightning.datamodules.notes import ATTRIBUTE_NAMES, PITCHES, parse_caption
from mmgen_lightning.metrics.judges import get_judge
from mmgen_lightning.metrics.pitch import pitch_within, read_pitch
from mmgen_lightning.metrics.report import load_datamodule
from mmgen_lightning.models.base import load_generator

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("test", "heldout")


def whole_split(datamodule, split: str) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(datamodule.dataset(split), batch_size=len(datamodule.dataset(split)))))


@torch.no_grad()
def generate_audio(model, batch: dict[str, torch.Tensor], chunk: int = 64, seed: int = 0) -> torch.Tensor:
    """One clip ``B,T`` per caption of ``batch``, chunk ``i`` sampled with seed ``seed + i``."""
    clips = []
    for index, start in enumerate(range(0, len(batch["text"]), chunk)):
        conditions = {key: batch[key][start:start + chunk] for key in ("text", "text_mask")}
        clips.append(model.generate(conditions, len(conditions["text"]), seed=seed + index)["audio"])
    return torch.cat(clips)


def read_notes(audio: torch.Tensor, attributes: torch.Tensor, judge, sample_rate: int) -> dict:
    """Share of clips sounding the asked pitch (within a semitone, by FFT) and read by the judge as the
    asked family, instrument and loudness; ``attributes: B,4`` as the Notes set gives them."""
    asked_pitch = attributes[:, ATTRIBUTE_NAMES.index("pitch")] + PITCHES[0]
    read = judge.predict(audio).cpu()
    judged = {name: (read[:, i] == attributes[:, ATTRIBUTE_NAMES.index(name)]).float().mean().item()
              for i, name in enumerate(judge.attributes) if name != "pitch"}
    return {"clips": len(audio),
            "pitch_within_a_semitone": round(pitch_within(read_pitch(audio, sample_rate), asked_pitch).float().mean().item(), 4),
            **{f"judge_{name}": round(value, 4) for name, value in judged.items()}}


def text_to_audio(model, datamodule) -> dict:
    judge = get_judge(datamodule, "audio")
    rate = datamodule.sample_rate
    results = {}
    for split in SPLITS:
        batch = whole_split(datamodule, split)
        started = time.time()
        samples = generate_audio(model, batch)
        results[split] = {"generated": read_notes(samples, batch["attributes"], judge, rate),
                          "real_renders": read_notes(batch["audio"].float(), batch["attributes"], judge, rate),
                          "generation_seconds": round(time.time() - started, 1)}
    return {"direction": "text->audio", **results}


@torch.no_grad()
def audio_to_text(model, datamodule) -> dict:
    results = {}
    for split in SPLITS:
        batch = whole_split(datamodule, split)
        started = time.time()
        ids = torch.cat([model.generate({"audio": chunk}, len(chunk))["text"] for chunk in batch["audio"].split(128)])
        captions = model.tokenizer.decode(ids)
        parsed = [parse_caption(text) or {} for text in captions]
        truth = batch["attributes"].tolist()
        accuracy = {name: round(sum(said.get(name) == row[i] for said, row in zip(parsed, truth)) / len(truth), 4)
                    for i, name in enumerate(ATTRIBUTE_NAMES)}
        every = sum(all(said.get(name) == row[i] for i, name in enumerate(ATTRIBUTE_NAMES))
                    for said, row in zip(parsed, truth)) / len(truth)
        references = model.tokenizer.decode(batch["text"])
        results[split] = {"clips": len(truth), "naming_right": accuracy, "all_four_right": round(every, 4),
                          "unreadable_captions": sum(not said for said in parsed),
                          "captioning_seconds": round(time.time() - started, 1),
                          "examples": [{"reference": r, "generated": g} for r, g in zip(references[:6], captions[:6])]}
    return {"direction": "audio->text", "decoding": "greedy", **results}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/flow/notes.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="measure the existing last.ckpt")
    parser.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="extra `mmgen fit` arguments")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / args.config).read_text())
    family = Path(args.config).parent.name
    load_before, train_seconds = os.getloadavg(), None
    if not args.skip_fit:
        train_seconds = fit_from_scratch(args.config, config, args.fit_args)
    load_after = os.getloadavg()
    ckpt = ROOT / checkpoint_dir(config) / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = load_generator(ckpt).eval()
    datamodule = load_datamodule(ckpt, ROOT / args.config)
    datamodule.setup("test")
    started = time.time()
    metrics = audio_to_text(model, datamodule) if model.output_modalities == ("text",) else \
        text_to_audio(model, datamodule)
    report = {"command": "OMP_NUM_THREADS=1 python benchmarks/notes_quality.py " + " ".join(sys.argv[1:]),
              "config": args.config, "family": type(model).__name__, "max_time": config["trainer"].get("max_time"),
              "train_seconds_including_startup": train_seconds, "steps": stored["global_step"],
              "epochs": stored["epoch"] + 1, "scoring_seconds": round(time.time() - started, 1), **metrics,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
                         "1 torch thread",
              "load_average_1min_before_and_after_training": [round(load_before[0], 2), round(load_after[0], 2)],
              "torch": torch.__version__}
    out = ROOT / "benchmarks" / "results" / f"notes_{family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

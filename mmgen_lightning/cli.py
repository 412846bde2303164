"""The ``mmgen`` command: LightningCLI's ``fit/validate/test/predict`` plus ``generate`` and ``evaluate``.

Models and datamodules are chosen by ``class_path`` in YAML (subclass mode). The datamodule's
``data_spec`` (vocab size, image size, sample rate, ...) is linked into ``model.data_spec`` at
instantiation, so a config never repeats a size that belongs to the data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from mmgen_lightning.batch import MODALITIES
from mmgen_lightning.callbacks.faults import DataErrorReport, RandomStateCheckpoint, StopOnNonFiniteLoss
from mmgen_lightning.checkpoint_io import AtomicCheckpointIO
from mmgen_lightning.datamodules.base import MultimodalDataModule
from mmgen_lightning.models.base import GenerativeModule, load_generator

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
SAMPLING_KNOBS = {"temperature": float, "top_k": int, "top_p": float, "guidance_scale": float,
                  "truncation": float, "num_beams": int, "steps": int}


class MMGenCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_spec", "model.init_args.data_spec", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        # the default callbacks would clash with a config that turns the progress bar or logger off
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        unwanted = ((RichProgressBar,) if trainer.get("enable_progress_bar") is False else ()) + (
            (LearningRateMonitor,) if trainer.get("logger") is False else ())
        self.trainer_defaults["callbacks"] = [c for c in self.trainer_defaults["callbacks"]
                                              if not isinstance(c, unwanted)]


def lightning_main(args: Sequence[str]) -> None:
    import mmgen_lightning.datamodules  # noqa: F401 - registers the built-in sources for class_path
    import mmgen_lightning.models  # noqa: F401 - registers the families for class_path

    # Fault tolerance by default: a NaN/Inf loss stops with the last finite state saved, checkpoints carry
    # the random state (exact resumption) and are written atomically, skipped samples are reported.
    # OnExceptionCheckpoint is not a default: as a Checkpoint callback it would replace Lightning's default
    # ModelCheckpoint and clash with `enable_checkpointing: false`; recipes add ExceptionCheckpoint.
    callbacks = [RichProgressBar(), LearningRateMonitor(), StopOnNonFiniteLoss(), RandomStateCheckpoint(),
                 DataErrorReport()]
    MMGenCLI(GenerativeModule, MultimodalDataModule, subclass_mode_model=True, subclass_mode_data=True,
             args=list(args), save_config_kwargs={"overwrite": True},
             trainer_defaults={"callbacks": callbacks, "plugins": [AtomicCheckpointIO()]})


# --- generate --------------------------------------------------------------------------------
def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgen generate", description=(
        "Sample from a checkpoint; writes one file per sample and DIR/manifest.jsonl. "
        "Each repeated condition (--text/--image/--audio/--label) gets --num samples; "
        "several kinds of condition are paired in order."))
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmgen fit`")
    parser.add_argument("--to", required=True, choices=[m for m in MODALITIES if m != "label"],
                        help="modality to generate")
    parser.add_argument("--text", action="append", default=[], help="caption condition (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="image file condition (repeatable)")
    parser.add_argument("--audio", action="append", default=[], help="WAV/FLAC file condition (repeatable)")
    parser.add_argument("--label", action="append", default=[], type=int, help="class index (repeatable)")
    parser.add_argument("--num", type=int, default=8, help="samples per condition")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=64, help="samples per generate() call")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    for knob, kind in SAMPLING_KNOBS.items():
        parser.add_argument(f"--{knob}", type=kind, default=None, help="sampling knob passed to generate()")
    return parser


def _conditions(args: argparse.Namespace, model: GenerativeModule) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Parse the repeated condition flags into a batch of ``k`` rows and their manifest entries."""
    from mmgen_lightning.generate import load_image, load_audio

    given = {name: getattr(args, name) for name in ("text", "image", "audio", "label") if getattr(args, name)}
    counts = {len(values) for values in given.values()}
    if len(counts) > 1:
        raise SystemExit(f"mmgen generate: give the same number of each condition, got "
                         f"{ {name: len(values) for name, values in given.items()} }")
    rows = counts.pop() if counts else 1
    conditions: dict[str, torch.Tensor] = {}
    if "text" in given:
        if model.tokenizer is None:
            raise SystemExit(f"mmgen generate: {args.ckpt} has no tokenizer, so it takes no --text")
        conditions.update(model.tokenizer.encode(given["text"]))
    if "image" in given:
        conditions["image"] = torch.stack([load_image(p, model.spec("image_size"), model.spec("image_channels"))
                                           for p in given["image"]])
    if "audio" in given:
        conditions["audio"] = torch.stack([load_audio(p, model.spec("sample_rate"), model.spec("audio_length"))
                                           for p in given["audio"]])
    if "label" in given:
        conditions["label"] = torch.tensor(given["label"], dtype=torch.long)
    described = [{name: values[row] for name, values in given.items()} for row in range(rows)]
    return conditions, described


def generate_main(argv: Sequence[str]) -> None:
    from mmgen_lightning.generate import write_samples

    args = generate_parser().parse_args(argv)
    if args.num < 1:
        raise SystemExit("mmgen generate: --num must be >= 1")
    model = load_generator(args.ckpt, map_location=args.device).to(args.device)
    conditions, described = _conditions(args, model)
    sampling = {k: getattr(args, k) for k in SAMPLING_KNOBS if getattr(args, k) is not None}
    # every condition row repeated --num times, generated in chunks of --batch_size
    repeat = torch.arange(len(described)).repeat_interleave(args.num)
    torch.manual_seed(args.seed)
    written = 0
    try:
        for chunk in repeat.split(args.batch_size):
            batch = {key: value[chunk] for key, value in conditions.items()}
            samples = model.generate(batch, num_samples=len(chunk), to=args.to, **sampling)
            texts = model.tokenizer.decode(samples["text"]) if args.to == "text" else None
            write_samples(samples, args.to, args.out, [described[i] for i in chunk.tolist()], args.seed,
                          texts=texts, sample_rate=model.data_spec.get("sample_rate"), start_index=written)
            written += len(chunk)
    except (ValueError, TypeError) as error:
        raise SystemExit(f"mmgen generate: {error}") from error
    print(f"wrote {written} {args.to} samples and manifest.jsonl to {args.out}")


# --- shard -----------------------------------------------------------------------------------
def shard_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    from mmgen_lightning.datamodules.manifest import ManifestDataModule

    parser = ArgumentParser(prog="mmgen shard", description=(
        "Decode a manifest once into litdata shards for StreamingDataModule: writes OUT/<split>/ chunks, "
        "OUT/mmgen.json (sizes, row counts, skipped rows) and OUT/tokenizer.json. The --data.* options are "
        "ManifestDataModule's; --config takes a YAML file with a `data:` section of them."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with data: {manifest: ..., ...}")
    parser.add_class_arguments(ManifestDataModule, "data", skip={"batch_size", "num_workers"})
    parser.add_argument("--out", required=True, help="output folder (local; upload it to object storage after)")
    parser.add_argument("--chunk_bytes", default="64MB", help="target size of one chunk file")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    return parser


def shard_main(argv: Sequence[str]) -> None:
    from mmgen_lightning.datamodules.manifest import DataError, ManifestDataModule
    from mmgen_lightning.datamodules.streaming import shard_manifest

    parser = shard_parser()
    args = parser.parse_args(list(argv))
    if args.workers < 1:
        raise SystemExit("mmgen shard: --workers must be >= 1")
    try:
        datamodule = ManifestDataModule(**args.data.as_dict())
        meta = shard_manifest(datamodule, args.out, chunk_bytes=args.chunk_bytes, num_workers=args.workers)
    except (DataError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"mmgen shard: {error}") from error
    for split, counts in meta["splits"].items():
        print(f"{split:5s}  rows {counts['rows']:8d}  written {counts['written']:8d}  skipped {counts['skipped']:6d}")
    print(f"wrote shards, {args.out}/mmgen.json and {args.out}/tokenizer.json")


# --- evaluate --------------------------------------------------------------------------------
def evaluate_main(argv: Sequence[str]) -> None:
    from mmgen_lightning.metrics.report import evaluate_cli

    evaluate_cli(argv)


HELP = """usage: mmgen {fit,validate,test,predict,generate,evaluate,shard,retrieve,serve} ...

  fit        train a model:            mmgen fit --config configs/quickstart.yaml
  validate   run the validation loop:  mmgen validate --config CFG --ckpt_path CKPT
  test       run the test loop:        mmgen test --config CFG --ckpt_path CKPT
  predict    run the predict loop:     mmgen predict --config CFG --ckpt_path CKPT
  generate   sample to files:          mmgen generate --ckpt CKPT --to image --text "a red circle" --num 8 --out DIR
  evaluate   metrics report:           mmgen evaluate --ckpt CKPT --out report.json
  shard      manifest -> shards:       mmgen shard --data.manifest data.jsonl --out shards/
  retrieve   rank files by a query:    mmgen retrieve --ckpt ALIGNER --query-text "a red circle" --index data.jsonl --top 5
  serve      local web page:           mmgen serve --ckpt CKPT [--ckpt CKPT2 ...] [--port 7860]

`mmgen SUBCOMMAND --help` explains each one.
"""


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
    elif argv[0] == "generate":
        generate_main(argv[1:])
    elif argv[0] == "evaluate":
        evaluate_main(argv[1:])
    elif argv[0] == "shard":
        shard_main(argv[1:])
    elif argv[0] == "retrieve":
        from mmgen_lightning.retrieve import main as retrieve_main

        retrieve_main(argv[1:])
    elif argv[0] == "serve":
        from mmgen_lightning.serve import main as serve_main

        serve_main(argv[1:])
    elif argv[0] in TRAINER_SUBCOMMANDS:
        lightning_main(argv)
    else:
        raise SystemExit(f"mmgen: unknown subcommand {argv[0]!r}; allowed: "
                         f"{', '.join(TRAINER_SUBCOMMANDS + ('generate', 'evaluate', 'shard', 'retrieve', 'serve'))}")


if __name__ == "__main__":
    main()

"""The ``mmgen`` command: LightningCLI's ``fit/validate/test/predict`` plus ``generate``, ``evaluate``, ``shard``,
``retrieve`` and ``serve``.

This module parses, calls the package and prints; nothing in the package imports it (the console script
is its only caller). Generation, knob checks and output files are :mod:`mmgen_lightning.service`'s, which the
``serve`` page calls too; ``evaluate``, ``retrieve`` and ``serve`` are :mod:`~mmgen_lightning.metrics.report`,
:mod:`~mmgen_lightning.retrieve` and :mod:`~mmgen_lightning.serve`.

Models and datamodules are chosen by ``class_path`` in YAML (subclass mode). The datamodule's
``data_spec`` (vocab size, image size, sample rate, ...) is linked into ``model.data_spec`` at
instantiation, so a config never repeats a size that belongs to the data.

Every subcommand reports the errors a user can fix as one line on stderr,
``mmgen <command>: error: <what> (<where>): <what to do>``, exit status 2 for usage errors and 1 for
data and checkpoint errors (:mod:`mmgen_lightning.errors`); ``--debug`` or ``MMGEN_DEBUG=1`` shows the
traceback. Nothing a user already has is overwritten unless they pass ``--overwrite``.

Start-up: this module imports only the standard library and the package's light modules (``errors``,
``knobs``, ``service``); torch and Lightning are imported inside the subcommand that uses them, so
``mmgen --help``, ``mmgen generate --help`` and a bad argument return before ``import lightning`` would have finished.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmgen_lightning.errors import ArgumentParser, CheckpointError, InputError, MMGenError, UsageError, report
from mmgen_lightning.knobs import KNOWN_KNOBS
from mmgen_lightning.service import (CONDITIONS, GENERATED, OFFERED_KNOBS, Request, check_at_least_one, check_caption,
                                     check_checkpoint_file, check_config_file, check_device, check_input_file,
                                     check_knobs, check_output_file, check_output_folder, check_seed, generate, warn)

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXTRA_SUBCOMMANDS = ("generate", "evaluate", "shard", "retrieve", "serve")


# --- fit / validate / test / predict ----------------------------------------------------------
def _checkpoint_family(path: str | Path) -> str | None:
    """The family class name recorded in an mmgen checkpoint, read without building anything."""
    from mmgen_lightning.checkpoint_io import load_weights_only

    checkpoint = load_weights_only(path, map_location="cpu")
    extras = checkpoint.get("mmgen") if isinstance(checkpoint, dict) else None
    return (extras or {}).get("class_path", "").rpartition(".")[2] or None


def _config_files(args: Sequence[str]) -> list[str]:
    """The files given to ``--config``/``-c`` (LightningCLI also takes an inline YAML string there)."""
    found = []
    for index, argument in enumerate(args):
        if argument in ("--config", "-c") and index + 1 < len(args):
            found.append(args[index + 1])
        elif argument.startswith("--config="):
            found.append(argument.partition("=")[2])
    return [path for path in found if Path(path).is_file()]


def free_name(folder: str | Path, filename: str) -> str:
    """``filename``, or the first of ``stem-v1.suffix``, ``stem-v2.suffix``, ... not taken in ``folder``
    (the suffix ModelCheckpoint gives a checkpoint name that is taken)."""
    stem, suffix = Path(filename).stem, Path(filename).suffix
    name, version = filename, 0
    while (Path(folder) / name).exists():
        version += 1
        name = f"{stem}-v{version}{suffix}"
    return name


def lightning_main(args: Sequence[str]) -> None:
    for path in _config_files(args):
        check_config_file(path)

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    import mmgen_lightning.datamodules  # noqa: F401 - registers the built-in sources for class_path
    import mmgen_lightning.models  # noqa: F401 - registers the families for class_path
    from mmgen_lightning.callbacks.faults import DataErrorReport, RandomStateCheckpoint, StopOnNonFiniteLoss
    from mmgen_lightning.checkpoint_io import AtomicCheckpointIO, state_dict_mismatch
    from mmgen_lightning.datamodules.base import MultimodalDataModule
    from mmgen_lightning.models.base import GenerativeModule

    command = args[0] if args else "fit"

    class SaveConfigBesideTheUsers(SaveConfigCallback):
        """Lightning's saving of the run's config to its log folder, but never over a file: not over a config
        file the run was started from (with the logger off the log folder is ``default_root_dir``, often that
        file's folder; the run's is then ``config.run.yaml``), nor over an earlier run's (``config-v1.yaml``, ...)."""

        def wanted_filename(self, folder: str) -> str:
            given = {os.path.abspath(str(path)) for path in (self.config.get("config") or [])}
            if os.path.abspath(os.path.join(folder, self.config_filename)) in given:
                return f"{Path(self.config_filename).stem}.run.yaml"
            return self.config_filename

        def setup(self, trainer, pl_module, stage: str) -> None:
            if not self.already_saved:
                folder = trainer.log_dir or "."
                wanted = self.wanted_filename(folder)
                if wanted != self.config_filename and trainer.is_global_zero:
                    warn(command, f"{os.path.join(folder, self.config_filename)} is this run's --config: the "
                                  f"resolved config is saved beside it as {free_name(folder, wanted)}")
                self.config_filename = free_name(folder, wanted)
            super().setup(trainer, pl_module, stage)

    class MMGenCLI(LightningCLI):
        def init_parser(self, **kwargs: Any):
            # errors are raised, not printed with the whole usage: main() reports them as one line
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.data_spec", "model.init_args.data_spec", apply_on="instantiate")

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            # the default callbacks would clash with a config that turns the progress bar or logger off
            trainer = config.trainer
            unwanted = ((RichProgressBar,) if trainer.get("enable_progress_bar") is False else ()) + (
                (LearningRateMonitor,) if trainer.get("logger") is False else ())
            self.trainer_defaults["callbacks"] = [c for c in self.trainer_defaults["callbacks"]
                                                  if not isinstance(c, unwanted)]

        def _set_seed(self) -> None:
            seed = self._get(self.config, "seed_everything")
            if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed < 2**32:
                raise UsageError(f"seed {seed} is out of range", "seed_everything", "give a whole number in "
                                 "[0, 2**32 - 1], true for a random one, or false for none")
            super()._set_seed()

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads the checkpoint's hyper-parameters into the model's config here: an unreadable
            # file or another family's arguments would fail deep inside; both are named first
            if self.config.get("subcommand"):
                self._check_ckpt_family(self.config[self.config.subcommand])
            super()._parse_ckpt_path()

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except Exception as error:
                error.mmgen_exit_code = 2  # a config value a class refused: a usage error, unless it says otherwise
                raise

        def _run_subcommand(self, subcommand: str) -> None:
            try:
                super()._run_subcommand(subcommand)
            except RuntimeError as error:
                # the checkpoint's hyper-parameters rebuilt the model, but sizes linked from the data (image size,
                # vocabulary, ...) can still differ: torch then lists every mismatching tensor; the first is enough
                mismatch = state_dict_mismatch(str(error))
                ckpt_path = self.config[subcommand].get("ckpt_path")
                if mismatch is None or not ckpt_path:
                    raise
                raise CheckpointError(f"the checkpoint does not fit the {type(self.model).__name__} this config "
                                      f"builds: {mismatch}", f"--ckpt_path {ckpt_path}",
                                      "use the model and data settings it was trained with (the data's sizes set "
                                      "the model's)") from error

        def _check_ckpt_family(self, config) -> None:
            """``--ckpt_path`` of another family would fail deep in ``load_state_dict``; name both at once."""
            ckpt_path, model = config.get("ckpt_path"), config.get("model")
            if not ckpt_path or not Path(str(ckpt_path)).is_file() or model is None:
                return
            wanted = str(model.get("class_path", "")).rpartition(".")[2]
            found = _checkpoint_family(ckpt_path)
            if found and wanted and found != wanted:
                raise CheckpointError(f"the checkpoint is a {found}, but the config builds a {wanted}",
                                      f"--ckpt_path {ckpt_path}",
                                      f"give a {wanted} checkpoint, or the config of the {found} it was trained with")

        def before_fit(self) -> None:
            if self.config[self.subcommand].get("ckpt_path"):
                return  # resuming continues the run in its own folder
            run_folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective call under DDP
            if not self.trainer.is_global_zero:
                return
            for saver in self.trainer.callbacks:
                wanted = saver.wanted_filename(str(run_folder)) if isinstance(saver, SaveConfigBesideTheUsers) else None
                if wanted and (run_folder / wanted).exists():
                    warn(command, f"{run_folder} already holds a run's {wanted}; it is kept, and this run's config is "
                                  f"saved beside it as {free_name(run_folder, wanted)}")
            for callback in self.trainer.checkpoint_callbacks:
                if not isinstance(callback, ModelCheckpoint):
                    continue
                folder = Path(callback.dirpath) if callback.dirpath else run_folder / "checkpoints"
                held = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
                if held:
                    warn(command, f"{folder} already holds a run's checkpoints ({', '.join(held[:3])}); they are kept, "
                                  f"and this run's get a -vN suffix there (e.g. last-v1.ckpt); the names follow at the end")

        def after_fit(self) -> None:
            run_folder = self.trainer.log_dir or "."  # a collective call under DDP
            if not self.trainer.is_global_zero:
                return
            written = [p for callback in self.trainer.checkpoint_callbacks
                       for p in (getattr(callback, "last_model_path", ""), callback.best_model_path) if p]
            configs = [os.path.join(run_folder, c.config_filename) for c in self.trainer.callbacks
                       if isinstance(c, SaveConfigCallback) and c.already_saved]
            if written or configs:
                print(f"mmgen {command}: this run's checkpoints: {', '.join(dict.fromkeys(written)) or 'none'}"
                      + (f"; its config: {configs[0]}" if configs else ""), file=sys.stderr)

    # Fault tolerance by default: a NaN/Inf loss stops with the last finite state saved, checkpoints carry
    # the random state (exact resumption) and are written atomically, skipped samples are reported.
    # OnExceptionCheckpoint is not a default: as a Checkpoint callback it would replace Lightning's default
    # ModelCheckpoint and clash with `enable_checkpointing: false`; recipes add ExceptionCheckpoint.
    callbacks = [RichProgressBar(), LearningRateMonitor(), StopOnNonFiniteLoss(), RandomStateCheckpoint(),
                 DataErrorReport()]
    # main(argv) passes the console script's own sys.argv[1:] as args; LightningCLI would warn that both are given
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    MMGenCLI(GenerativeModule, MultimodalDataModule, subclass_mode_model=True, subclass_mode_data=True,
             args=list(args), save_config_callback=SaveConfigBesideTheUsers, save_config_kwargs={"overwrite": True},
             # a class path, not an instance: the config saved with the run must parse again
             trainer_defaults={"callbacks": callbacks,
                               "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.AtomicCheckpointIO"}]})


# --- generate --------------------------------------------------------------------------------
def add_knob_flags(parser) -> None:
    """The sampling-knob flags of ``mmgen generate`` and ``mmgen evaluate`` (unset: the checkpoint's defaults)."""
    knobs = parser.add_argument_group("sampling knobs", "passed to the family's sample(); each family takes some "
                                                        "of them, and names its own when given another")
    for knob in OFFERED_KNOBS:
        spec = KNOWN_KNOBS[knob]
        knobs.add_argument(f"--{knob}", type=spec.kind, default=None, help=f"{spec.describe()}: {spec.help}")


def knob_flags(args) -> dict[str, Any]:
    """The knob flags given, checked against the ranges every family shares."""
    return check_knobs({knob: getattr(args, knob) for knob in OFFERED_KNOBS})


def generate_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmgen generate", description=(
        "Sample from a checkpoint; writes one file per sample and DIR/manifest.jsonl into a new or empty folder "
        "(--overwrite replaces an earlier run's). Each repeated condition (--text/--image/--audio/--label) gets "
        "--num samples; several kinds of condition are paired in order. Errors are one line (exit 2: usage, "
        "1: data/checkpoint); --debug shows the traceback."))
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmgen fit`")
    parser.add_argument("--to", required=True, choices=GENERATED, help="modality to generate")
    parser.add_argument("--text", action="append", default=[], help="caption condition (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="image file condition (repeatable)")
    parser.add_argument("--audio", action="append", default=[], help="WAV/FLAC file condition (repeatable)")
    parser.add_argument("--label", action="append", default=[], type=int, help="class index (repeatable)")
    parser.add_argument("--num", type=int, default=8, help="samples per condition (>= 1)")
    parser.add_argument("--out", required=True, help="output folder: new or empty, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that already holds files: an earlier run's manifest.jsonl and "
                             "the files it lists are deleted first, other files are kept (same names are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling noise, in [0, 2**63 - 1]")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=64,
                        help="samples per generate() call (>= 1)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model's networks before sampling (callbacks.compile_networks): pays "
                             "a one-off compile for faster steps, worth it for many samples")
    add_knob_flags(parser)
    return parser


def generate_main(argv: Sequence[str]) -> None:
    args = generate_parser().parse_args(argv)
    request = Request(args.ckpt, args.to, args.out, {name: getattr(args, name) for name in CONDITIONS},
                      num=args.num, seed=args.seed, batch_size=args.batch_size, device=args.device,
                      sampling={knob: getattr(args, knob) for knob in OFFERED_KNOBS}, overwrite=args.overwrite,
                      compile=args.compile)
    rows = generate(request)
    print(f"wrote {len(rows)} {args.to} samples and manifest.jsonl to {args.out}")


# --- shard -----------------------------------------------------------------------------------
def shard_parser():
    from jsonargparse import ActionConfigFile
    from jsonargparse import ArgumentParser as ConfigParser

    from mmgen_lightning.datamodules.manifest import ManifestDataModule

    parser = ConfigParser(prog="mmgen shard", exit_on_error=False, description=(
        "Decode a manifest once into litdata shards for StreamingDataModule: writes OUT/<split>/ chunks, "
        "OUT/mmgen.json (sizes, row counts, skipped rows) and OUT/tokenizer.json into a new or empty folder "
        "(--overwrite replaces earlier shards). The --data.* options are ManifestDataModule's; --config takes "
        "a YAML file with a `data:` section of them."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with data: {manifest: ..., ...}")
    parser.add_class_arguments(ManifestDataModule, "data", skip={"batch_size", "num_workers"})
    parser.add_argument("--out", required=True, help="output folder (local; upload it to object storage after)")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="replace the shards in a folder that already holds files")
    parser.add_argument("--chunk_bytes", "--chunk-bytes", dest="chunk_bytes", default="64MB",
                        help="target size of one chunk file")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes")
    parser.add_argument("--limit", type=int, default=None,
                        help="write at most this many rows of each split (the first ones): try the settings on a "
                             "large manifest before converting all of it")
    return parser


def _check_chunk_bytes(value: str | int) -> None:
    """litdata reads --chunk_bytes only inside its writer processes; a value it cannot read is named here."""
    from litdata.utilities.format import _convert_bytes_to_int  # litdata's own parser of "64MB"

    try:
        size = value if isinstance(value, int) else _convert_bytes_to_int(str(value))
    except ValueError as error:
        raise UsageError(f"cannot read {value!r} as a size ({error})", "--chunk_bytes", "give e.g. 64MB or 1GB") from error
    if size < 1:
        raise UsageError(f"a chunk must hold at least one byte, got {value!r}", "--chunk_bytes", "give e.g. 64MB")


def shard_main(argv: Sequence[str]) -> None:
    argv = [a for a in argv]
    if "--overwrite" in argv:  # a plain switch, as in generate and evaluate
        argv[argv.index("--overwrite")] = "--overwrite=true"
    for path in _config_files(argv):
        check_config_file(path, expected="a data: section of ManifestDataModule options")
    args = shard_parser().parse_args(argv)
    check_at_least_one("--workers", args.workers)
    check_at_least_one("--limit", args.limit)
    _check_chunk_bytes(args.chunk_bytes)
    out = check_output_folder(args.out, overwrite=args.overwrite)
    created = not out.exists()

    from mmgen_lightning.datamodules.manifest import ManifestDataModule
    from mmgen_lightning.datamodules.streaming import shard_manifest

    try:
        datamodule = ManifestDataModule(**args.data.as_dict())
    except ValueError as error:
        if not isinstance(error, InputError):
            error.mmgen_exit_code = 2  # an option value the datamodule refused
        raise
    try:
        meta = shard_manifest(datamodule, out, chunk_bytes=args.chunk_bytes, num_workers=args.workers,
                              limit=args.limit)
    except BaseException:
        if created:  # a half-written folder of our own would only be refused next time
            shutil.rmtree(out, ignore_errors=True)
        raise
    for split, counts in meta["splits"].items():
        print(f"{split:5s}  rows {counts['rows']:8d}  written {counts['written']:8d}  skipped {counts['skipped']:6d}")
    print(f"wrote shards, {out}/mmgen.json and {out}/tokenizer.json")


# --- evaluate --------------------------------------------------------------------------------
def evaluate_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmgen evaluate", description=(
        "Score a checkpoint: cross-modal coherence and sample quality (FID, KID, IS, precision/recall) read by "
        "judges trained on the real training data, BLEU/chrF of captions, and likelihood where the family has "
        "one. Writes JSON and a Markdown table beside it (never over existing files unless --overwrite). "
        "On data without judged attributes (a manifest) only the likelihood is measured, or alignment with "
        "--aligner."))
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `mmgen fit`")
    parser.add_argument("--config", default=None, help="config whose `data` section rebuilds the datamodule "
                                                       "(default: the datamodule stored in the checkpoint)")
    parser.add_argument("--out", required=True, help="report path (.json); a .md table is written beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report and its .md table")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many samples")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling, in [0, 2**63 - 1]")
    parser.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=64,
                        help="samples generated at once")
    parser.add_argument("--direction", action="append", default=None,
                        help="direction to score, e.g. 'text->image', or --direction=->image for unconditional "
                             "samples (repeatable; default: every direction the model serves)")
    parser.add_argument("--inception", nargs="?", const=True, default=None, metavar="WEIGHTS",
                        help="add Inception-v3 FID/KID/IS for images; weights from WEIGHTS, else "
                             "$MMGEN_INCEPTION_WEIGHTS, else torch-fidelity's cache (never downloaded)")
    parser.add_argument("--aligner", default=None, metavar="ALIGNER_CKPT",
                        help="an Aligner checkpoint: adds reference-free alignment (mean cosine of condition and "
                             "sample) and R-precision; for images also FID/KID, precision/recall and nearest-training-"
                             "image distances in its image embedding, each beside the real data's; works on a manifest "
                             "with no attributes")
    parser.add_argument("--reference-limit", "--reference_limit", dest="reference_limit", type=int, default=None,
                        metavar="N", help="with --aligner: compare image samples with at most N training images, a "
                                          "seeded random subset (default 2000)")
    add_knob_flags(parser)
    return parser


def evaluate_main(argv: Sequence[str]) -> None:
    args = evaluate_parser().parse_args(argv)
    sampling = knob_flags(args)
    check_at_least_one("--limit", args.limit)
    check_at_least_one("--batch_size", args.batch_size)
    check_seed(args.seed)
    check_checkpoint_file(args.ckpt)
    if args.config is not None:
        check_config_file(args.config, expected="a data: section (class_path and init_args)")
    check_at_least_one("--reference-limit", args.reference_limit)
    if args.reference_limit is not None and args.aligner is None:
        raise UsageError("--reference-limit sizes the --aligner scores", "--reference-limit",
                         "pass --aligner ALIGNER_CKPT too, or leave --reference-limit out")
    if args.aligner is not None:
        check_checkpoint_file(args.aligner, "--aligner")
    out = check_output_file(args.out, overwrite=args.overwrite, also=(".md",))

    from mmgen_lightning.metrics.report import evaluate, write_report

    report = evaluate(args.ckpt, args.config, args.split, args.limit, args.seed, inception=args.inception,
                      batch_size=args.batch_size, directions=args.direction, aligner=args.aligner,
                      reference_limit=args.reference_limit, sampling=sampling)
    print(write_report(report, out))


# --- retrieve --------------------------------------------------------------------------------
#: the kinds of query `mmgen retrieve` takes, one flag each (--query_text, --query_image, --query_audio)
QUERY_KINDS = ("text", "image", "audio")


def retrieve_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmgen retrieve", description=(
        "Rank the files (or captions) of a manifest by their similarity to a query, in the space of an Aligner "
        "checkpoint; prints the top K and optionally writes them as JSON lines "
        "{rank, score, line, file | caption}."))
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


def retrieve_main(argv: Sequence[str]) -> None:
    args = retrieve_parser().parse_args(argv)
    check_at_least_one("--top", args.top)
    check_at_least_one("--batch_size", args.batch_size)
    kind = next(k for k in QUERY_KINDS if getattr(args, f"query_{k}") is not None)
    query = getattr(args, f"query_{kind}")
    if kind == "text":
        check_caption(query, "--query_text")
    else:
        check_input_file(query, f"--query_{kind}")
    check_checkpoint_file(args.ckpt)
    out = check_output_file(args.out, overwrite=args.overwrite) if args.out else None
    check_device(args.device)

    from mmgen_lightning.retrieve import retrieve

    target, results = retrieve(args.ckpt, kind, query, args.index, args.target, args.top, args.batch_size,
                               args.device)
    print(f"{'rank':>4}  {'score':>7}  {'line':>5}  {target}")
    for result in results:
        print(f"{result['rank']:4d}  {result['score']:7.4f}  {result['line']:5d}  "
              f"{result.get('file', result.get('caption'))}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(result) + "\n" for result in results))
        print(f"wrote {len(results)} results to {out}")


# --- serve -----------------------------------------------------------------------------------
def serve_parser() -> ArgumentParser:
    from mmgen_lightning.serve import AUTH_ENV

    parser = ArgumentParser(prog="mmgen serve", description=(
        "A web page to try checkpoints: one tab per direction each checkpoint serves, a compare tab, downloads "
        "and the `mmgen generate` command of every sample. Runs one request at a time and holds at most "
        "--queue_size more; beyond that a request is refused as busy. Listening on anything but loopback needs a "
        f"login (--auth_file or ${AUTH_ENV}). Needs `pip install mmgen-lightning[serve]`."))
    parser.add_argument("--ckpt", action="append", required=True,
                        help="checkpoint file, or a folder of *.ckpt (repeatable); the page loads checkpoints "
                             "only from these folders")
    parser.add_argument("--port", type=int, default=7860, help="TCP port (0 = a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; the default is this machine only (0.0.0.0 opens it to the "
                             "network and needs a login)")
    parser.add_argument("--auth_file", "--auth-file", dest="auth_file", default=None,
                        help=f"file of user:password lines, one login each (keep it private: chmod 600); or set "
                             f"${AUTH_ENV}=user:password. A password is never given on the command line")
    parser.add_argument("--queue_size", "--queue-size", dest="queue_size", type=int, default=16,
                        help="requests that may wait while one runs; more are refused with a busy message")
    parser.add_argument("--out", default="outputs/serve", help="folder the page writes samples to")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def start_serving(argv: Sequence[str]):
    """Check the arguments, build the page and serve it in the background; returns the Gradio app (its
    ``local_url``; ``close()`` stops it)."""
    from mmgen_lightning.serve import AUTH_ENV, Server, UserError, is_loopback, launch, read_logins

    args = serve_parser().parse_args(list(argv))
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}", f"--port {args.port}",
                         "give 0 for a free port")
    check_at_least_one("--queue_size", args.queue_size)
    logins = read_logins(args.auth_file, os.environ.get(AUTH_ENV))
    if not logins and not is_loopback(args.host):
        raise UsageError(f"listening on {args.host} opens the page to other machines, and no login is set",
                         f"--host {args.host}", f"give --auth_file FILE (user:password lines, chmod 600) or set "
                         f"{AUTH_ENV}=user:password, or listen on 127.0.0.1")
    check_device(args.device)
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise MMGenError("Gradio is not installed", None, "run `pip install mmgen-lightning[serve]` "
                         "(`make install` installs it)") from error
    try:
        server = Server(args.ckpt, args.out, device=args.device)
    except UserError as error:
        raise CheckpointError(str(error)) from error
    if not is_loopback(args.host):
        warn("serve", f"listening on {args.host}: other machines can reach this page (with a login)")
    app = launch(server, args.host, args.port, logins=logins, queue_size=args.queue_size)
    print(f"mmgen serve: {app.local_url} ({'login required; ' if logins else ''}one request at a time, "
          f"{args.queue_size} more may wait, beyond that busy; Ctrl-C stops it)", flush=True)
    return app


def serve_main(argv: Sequence[str]) -> None:
    """``mmgen serve``: start the page and serve until interrupted."""
    start_serving(argv).block_thread()


HELP = """usage: mmgen {fit,validate,test,predict,generate,evaluate,shard,retrieve,serve} ... [--debug]

  fit        train a model:            mmgen fit --config configs/quickstart.yaml
  validate   run the validation loop:  mmgen validate --config CFG --ckpt_path CKPT
  test       run the test loop:        mmgen test --config CFG --ckpt_path CKPT
  predict    run the predict loop:     mmgen predict --config CFG --ckpt_path CKPT
  generate   sample to files:          mmgen generate --ckpt CKPT --to image --text "a red circle" --num 8 --out DIR
  evaluate   metrics report:           mmgen evaluate --ckpt CKPT --out report.json
  shard      manifest -> shards:       mmgen shard --data.manifest data.jsonl --out shards/
  retrieve   rank files by a query:    mmgen retrieve --ckpt ALIGNER --query_text "a red circle" --index data.jsonl --top 5
  serve      web page:                 mmgen serve --ckpt CKPT [--ckpt CKPT2 ...] [--port 7860]

`mmgen SUBCOMMAND --help` explains each one. Errors are one line: exit status 2 for a bad option, 1 for bad
data or a bad checkpoint; --debug (or MMGEN_DEBUG=1) shows the traceback. Output files that exist are never
replaced without --overwrite.
"""

COMMANDS = {"generate": generate_main, "evaluate": evaluate_main, "shard": shard_main, "retrieve": retrieve_main,
            "serve": serve_main}


def _dispatch(argv: list[str]) -> None:
    command = argv[0]
    if command in COMMANDS:
        COMMANDS[command](argv[1:])
    elif command in TRAINER_SUBCOMMANDS:
        lightning_main(argv)
    else:
        raise UsageError(f"unknown subcommand {command!r}", None,
                         f"allowed: {', '.join(TRAINER_SUBCOMMANDS + EXTRA_SUBCOMMANDS)} (see `mmgen --help`)")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MMGEN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return
    try:
        _dispatch(argv)
    except Exception as error:  # noqa: BLE001 - a user's error becomes one line; anything else keeps its stack
        code = report(argv[0] if argv[0] in TRAINER_SUBCOMMANDS + EXTRA_SUBCOMMANDS else "", error, debug)
        if code is None:
            raise
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()

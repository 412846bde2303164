"""The ``mmgen`` command: LightningCLI's ``fit/validate/test/predict`` plus ``generate``, ``evaluate``, ``shard``.

Models and datamodules are chosen by ``class_path`` in YAML (subclass mode). The datamodule's
``data_spec`` (vocab size, image size, sample rate, ...) is linked into ``model.data_spec`` at
instantiation, so a config never repeats a size that belongs to the data.

Every subcommand reports the errors a user can fix as one line on stderr,
``mmgen <command>: error: <what> (<where>): <what to do>``, exit status 2 for usage errors and 1 for
data and checkpoint errors (:mod:`mmgen_lightning.errors`); ``--debug`` or ``MMGEN_DEBUG=1`` shows the
traceback. Nothing a user already has is overwritten unless they pass ``--overwrite``.

Start-up: this module imports only the standard library and :mod:`mmgen_lightning.errors`/``knobs``;
torch and Lightning are imported inside the subcommand that uses them, so ``mmgen --help``,
``mmgen generate --help`` and a bad argument return before ``import lightning`` would have finished.
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

from mmgen_lightning.errors import ArgumentParser, CheckpointError, InputError, UsageError, report
from mmgen_lightning.knobs import KNOWN_KNOBS, SEED_LIMIT, check_sampling

TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXTRA_SUBCOMMANDS = ("generate", "evaluate", "shard", "retrieve", "serve")
#: knobs `mmgen generate` has a flag for; each family takes some of them (its `sample` arguments)
CLI_KNOBS = ("temperature", "top_k", "top_p", "guidance_scale", "guidance_start", "guidance_stop", "truncation",
             "private_scale", "num_beams", "steps")
#: what `--to` may ask for: batch.MODALITIES without `label` (batch.py imports torch, too slow for --help)
GENERATED = ("image", "text", "audio", "video")
#: the condition flags of `mmgen generate`, in their order; the files among them are read by their modality
CONDITIONS = ("text", "image", "audio", "label")
FILE_CONDITIONS = ("image", "audio")
#: an image whose longer side is more than this many times its shorter one loses most of itself to the crop
FAR_FROM_SQUARE = 2.0


def warn(command: str, message: str) -> None:
    print(f"mmgen {command}: warning: {message}", file=sys.stderr)


# --- output paths: checked before any model is loaded -----------------------------------------
def _writable_ancestor(path: Path, option: str) -> None:
    """Raise unless the nearest existing folder at or above ``path`` can be written to."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{probe} is a file, so {path} cannot be created", option, "give a path under a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write in {probe}", option, "give a folder you can write to")


def check_output_folder(path: str | Path, option: str = "--out", overwrite: bool = False) -> Path:
    """A folder for new files: a file there, or a folder that already holds files, is refused unless
    ``overwrite`` (the earlier files are then replaced as named)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder", option, "give a folder path (created if missing)")
    if out.is_dir():
        held = sorted(p.name for p in out.iterdir())
        if held and not overwrite:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise UsageError(f"{out} already holds {len(held)} files ({shown})", option,
                             "give a new or empty folder, or pass --overwrite to replace them")
    _writable_ancestor(out, option)
    return out


def check_output_file(path: str | Path, option: str = "--out", overwrite: bool = False,
                      also: Sequence[str] = ()) -> Path:
    """A file to write (and the files with suffixes ``also`` beside it): refused when it is a folder,
    or exists and ``overwrite`` is off."""
    out = Path(path)
    for target in (out, *(out.with_suffix(s) for s in also)):
        if target.is_dir():
            raise UsageError(f"{target} is a folder", option, "give a file path, e.g. reports/model.json")
        if target.exists() and not overwrite:
            raise UsageError(f"{target} already exists", option, "give a new path, or pass --overwrite to replace it")
    _writable_ancestor(out.parent, option)
    return out


def check_device(device: str) -> None:
    """A device torch knows and this machine has; asked before the checkpoint is loaded onto it."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise UsageError(f"unknown device {device!r}", "--device", "give cpu, cuda or cuda:N") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("this machine has no usable CUDA device (torch.cuda.is_available() is False)",
                             f"--device {device}", "use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"there is no CUDA device {parsed.index}; this machine has "
                             f"{torch.cuda.device_count()}", f"--device {device}", "give cuda:0 or another index")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("MPS is not available on this machine", f"--device {device}", "use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device type {parsed.type!r} is not supported here", "--device", "give cpu or cuda")


def check_seed(seed: int, option: str = "--seed") -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"seed {seed} is out of range", option, "give a whole number in [0, 2**63 - 1]")


def check_input_file(path: str, option: str) -> Path:
    """A condition file that exists and is not empty (decoding it comes later, with the model's sizes)."""
    file = Path(path)
    if not file.exists():
        raise InputError("file not found", f"{option} {file}", "check the path")
    if file.is_dir():
        raise InputError("is a folder, not a file", f"{option} {file}", "give a file")
    if file.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", f"{option} {file}", "give a non-empty file")
    return file


# --- fit / validate / test / predict ----------------------------------------------------------
def _checkpoint_family(path: str | Path) -> str | None:
    """The family class name recorded in an mmgen checkpoint, read without building anything."""
    from mmgen_lightning.checkpoint_io import load_weights_only

    checkpoint = load_weights_only(path, map_location="cpu")
    extras = checkpoint.get("mmgen") if isinstance(checkpoint, dict) else None
    return (extras or {}).get("class_path", "").rpartition(".")[2] or None


def lightning_main(args: Sequence[str]) -> None:
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    import mmgen_lightning.datamodules  # noqa: F401 - registers the built-in sources for class_path
    import mmgen_lightning.models  # noqa: F401 - registers the families for class_path
    from mmgen_lightning.callbacks.faults import DataErrorReport, RandomStateCheckpoint, StopOnNonFiniteLoss
    from mmgen_lightning.checkpoint_io import AtomicCheckpointIO
    from mmgen_lightning.datamodules.base import MultimodalDataModule
    from mmgen_lightning.models.base import GenerativeModule

    command = args[0] if args else "fit"

    class SaveConfigBesideTheUsers(SaveConfigCallback):
        """Lightning's saving of the run's config to its log folder, except over a config file the run was
        started from: with the logger off the log folder is ``default_root_dir``, often that file's folder."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            given = {os.path.abspath(str(path)) for path in (self.config.get("config") or [])}
            target = os.path.abspath(os.path.join(trainer.log_dir or ".", self.config_filename))
            if target in given:
                self.config_filename = f"{Path(self.config_filename).stem}.run.yaml"
                if trainer.is_global_zero:
                    warn(command, f"{target} is this run's --config: the resolved config is saved beside it as "
                                  f"{self.config_filename}")
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
            for callback in self.trainer.checkpoint_callbacks:
                folder = Path(callback.dirpath) if isinstance(callback, ModelCheckpoint) and callback.dirpath else None
                held = sorted(p.name for p in folder.glob("*.ckpt")) if folder and folder.is_dir() else []
                if held:
                    warn(command, f"{folder} already holds a run's checkpoints ({', '.join(held[:3])}); they are kept, "
                                  f"and this run's get a -vN suffix there (e.g. last-v1.ckpt); the names follow at the end")

        def after_fit(self) -> None:
            for callback in self.trainer.checkpoint_callbacks:
                written = [p for p in (getattr(callback, "last_model_path", ""), callback.best_model_path) if p]
                if written and self.trainer.is_global_zero:
                    print(f"mmgen {command}: this run's checkpoints: {', '.join(dict.fromkeys(written))}",
                          file=sys.stderr)

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


def add_knob_flags(parser) -> None:
    """The sampling-knob flags of ``mmgen generate`` and ``mmgen evaluate`` (unset: the checkpoint's defaults)."""
    knobs = parser.add_argument_group("sampling knobs", "passed to the family's sample(); each family takes some "
                                                        "of them, and names its own when given another")
    for knob in CLI_KNOBS:
        spec = KNOWN_KNOBS[knob]
        knobs.add_argument(f"--{knob}", type=spec.kind, default=None, help=f"{spec.describe()}: {spec.help}")


def knob_values(args) -> dict[str, Any]:
    """The knob flags given, each checked against the range every family shares (the family's own names and
    ranges are checked once the model is loaded: :func:`~mmgen_lightning.knobs.check_sampling`)."""
    sampling = {k: getattr(args, k) for k in CLI_KNOBS if getattr(args, k) is not None}
    for name, value in sampling.items():
        problem = KNOWN_KNOBS[name].problem(value)
        if problem:
            raise UsageError(f"{name} {problem}, got {value!r}", f"--{name}",
                             f"give --{name} as {KNOWN_KNOBS[name].describe()}")
    return sampling


def _check_generate_args(args) -> dict[str, Any]:
    """Everything that can be checked without the model: counts, ranges, knob values, files, --out."""
    for option, value in (("--num", args.num), ("--batch_size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}", option, f"give {option} 1 or more")
    check_seed(args.seed)
    sampling = knob_values(args)
    counts = {name: len(getattr(args, name)) for name in CONDITIONS if getattr(args, name)}
    if len(set(counts.values())) > 1:
        raise UsageError(f"give the same number of each condition, got {counts}",
                         " ".join(f"--{name}" for name in counts), "conditions are paired in order")
    for text in args.text:
        if not text.strip():
            raise UsageError("the caption is empty", f"--text {text!r}", "give a caption with words")
    for label in args.label:
        if label < 0:
            raise UsageError(f"a class index must be >= 0, got {label}", f"--label {label}", "give 0 or more")
    for option in FILE_CONDITIONS:
        for path in getattr(args, option):
            check_input_file(path, f"--{option}")
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise CheckpointError("checkpoint not found" if not ckpt.exists() else "is a folder, not a checkpoint file",
                              f"--ckpt {ckpt}", "give the .ckpt file `mmgen fit` wrote (e.g. CKPT_DIR/last.ckpt)")
    check_output_folder(args.out, overwrite=args.overwrite)
    check_device(args.device)
    return sampling


def _load_for_generate(args):
    from mmgen_lightning.models.base import load_generator

    try:
        model = load_generator(args.ckpt, map_location=args.device).to(args.device)
    except (ValueError, KeyError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        raise CheckpointError(message.replace(f"{args.ckpt}: ", ""), f"--ckpt {args.ckpt}",
                              "give a checkpoint written by `mmgen fit`") from error
    if args.compile:
        from mmgen_lightning.callbacks.compile import compile_networks

        compile_networks(model)
    return model


def _conditions(args, model) -> tuple[dict[str, Any], list[dict]]:
    """Read the repeated condition flags into a batch of ``k`` rows and their manifest entries, with the
    same readers (and checks) as training from a manifest; warns about what the model will not see."""
    import torch

    given = {name: getattr(args, name) for name in CONDITIONS if getattr(args, name)}
    rows = len(next(iter(given.values()))) if given else 1
    conditions: dict[str, torch.Tensor] = {}
    if "text" in given:
        if model.tokenizer is None:
            raise UsageError(f"{type(model).__name__} has no tokenizer, so it takes no captions",
                             "--text", f"drop --text; it serves: {', '.join(model.directions())}")
        for text in given["text"]:
            for problem in model.tokenizer.problems(text):
                warn("generate", f"--text {_short(text)}: {problem}")
        conditions.update(model.tokenizer.encode(given["text"]))
    from mmgen_lightning.modalities import get_modality

    for name in FILE_CONDITIONS:
        if name not in given:
            continue
        tensors = []
        for path in given[name]:
            try:  # the reader training uses for a manifest's files
                tensors.append(get_modality(name).read(Path(path), model.data_spec))
            except (ValueError, OSError) as error:
                raise InputError(str(error), f"--{name} {path}", f"give a readable, finite {name} file") from error
            if get_modality(name).pixels:
                _warn_far_from_square(path)
        conditions[name] = torch.stack(tensors)
    if "label" in given:
        classes = model.data_spec.get("num_classes")
        for label in given["label"]:
            if classes and label >= classes:
                raise UsageError(f"class {label} is out of range: the model knows {classes} classes",
                                 f"--label {label}", f"give 0 to {classes - 1}")
        conditions["label"] = torch.tensor(given["label"], dtype=torch.long)
    described = [{name: values[row] for name, values in given.items()} for row in range(rows)]
    return conditions, described


def _warn_far_from_square(path: str) -> None:
    """Warn when a picture loses most of itself to the centre crop its reader makes."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    if max(width, height) / max(1, min(width, height)) > FAR_FROM_SQUARE:
        warn("generate", f"--image {path} is {width}x{height}, far from square: like training from a manifest, "
                         "only its centre square is used")


def _short(text: str, length: int = 40) -> str:
    return repr(text if len(text) <= length else text[:length] + "...")


def _clear_earlier_run(out: Path) -> None:
    """With --overwrite: delete an earlier run's manifest.jsonl and the files it lists, so the new manifest
    describes only the new files (files the manifest does not list are left alone)."""
    manifest = out / "manifest.jsonl"
    if not manifest.is_file():
        return
    for line in manifest.read_text(encoding="utf-8").splitlines():
        try:
            name = json.loads(line).get("file")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(name, str) and Path(name).name == name:  # only plain names inside the folder
            (out / name).unlink(missing_ok=True)
    manifest.unlink()


def generate_main(argv: Sequence[str]) -> None:
    args = generate_parser().parse_args(argv)
    sampling = _check_generate_args(args)
    model = _load_for_generate(args)
    check_sampling(model, sampling, flag_style=True)
    sources = tuple(name for name in CONDITIONS if getattr(args, name))
    if not model.serves(sources, args.to):
        given = "+".join(sources) or "(no condition)"
        served = ", ".join(model.directions())
        raise UsageError(f"{type(model).__name__} cannot generate {given}->{args.to}", f"--to {args.to}",
                         f"it serves: {served}" if served else "it generates nothing (an Aligner scores and retrieves: "
                         "use `mmgen retrieve`, or `mmgen evaluate --aligner` to score another model)")
    conditions, described = _conditions(args, model)

    import torch

    from mmgen_lightning.generate import write_samples

    out = Path(args.out)
    if args.overwrite:
        _clear_earlier_run(out)
    # every condition row repeated --num times, generated in chunks of --batch_size (indices made per chunk,
    # so a large --num costs time, not memory)
    total = len(described) * args.num
    torch.manual_seed(args.seed)
    written = 0
    for start in range(0, total, args.batch_size):
        chunk = torch.arange(start, min(start + args.batch_size, total)) // args.num
        batch = {key: value[chunk] for key, value in conditions.items()}
        samples = model.generate(batch, num_samples=len(chunk), to=args.to, **sampling)
        write_samples(samples, args.to, out, [described[i] for i in chunk.tolist()], args.seed, model.data_spec,
                      model.tokenizer, start_index=written)
        written += len(chunk)
    print(f"wrote {written} {args.to} samples and manifest.jsonl to {out}")


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
    parser = shard_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}", "--workers", "give 1 or more")
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
        meta = shard_manifest(datamodule, out, chunk_bytes=args.chunk_bytes, num_workers=args.workers)
    except BaseException:
        if created:  # a half-written folder of our own would only be refused next time
            shutil.rmtree(out, ignore_errors=True)
        raise
    for split, counts in meta["splits"].items():
        print(f"{split:5s}  rows {counts['rows']:8d}  written {counts['written']:8d}  skipped {counts['skipped']:6d}")
    print(f"wrote shards, {out}/mmgen.json and {out}/tokenizer.json")


# --- evaluate --------------------------------------------------------------------------------
def evaluate_main(argv: Sequence[str]) -> None:
    from mmgen_lightning.metrics.report import evaluate_cli

    evaluate_cli(argv)


HELP = """usage: mmgen {fit,validate,test,predict,generate,evaluate,shard,retrieve,serve} ... [--debug]

  fit        train a model:            mmgen fit --config configs/quickstart.yaml
  validate   run the validation loop:  mmgen validate --config CFG --ckpt_path CKPT
  test       run the test loop:        mmgen test --config CFG --ckpt_path CKPT
  predict    run the predict loop:     mmgen predict --config CFG --ckpt_path CKPT
  generate   sample to files:          mmgen generate --ckpt CKPT --to image --text "a red circle" --num 8 --out DIR
  evaluate   metrics report:           mmgen evaluate --ckpt CKPT --out report.json
  shard      manifest -> shards:       mmgen shard --data.manifest data.jsonl --out shards/
  retrieve   rank files by a query:    mmgen retrieve --ckpt ALIGNER --query-text "a red circle" --index data.jsonl --top 5
  serve      local web page:           mmgen serve --ckpt CKPT [--ckpt CKPT2 ...] [--port 7860]

`mmgen SUBCOMMAND --help` explains each one. Errors are one line: exit status 2 for a bad option, 1 for bad
data or a bad checkpoint; --debug (or MMGEN_DEBUG=1) shows the traceback. Output files that exist are never
replaced without --overwrite.
"""


def _dispatch(argv: list[str]) -> None:
    command = argv[0]
    if command == "generate":
        generate_main(argv[1:])
    elif command == "evaluate":
        evaluate_main(argv[1:])
    elif command == "shard":
        shard_main(argv[1:])
    elif command == "retrieve":
        from mmgen_lightning.retrieve import main as retrieve_main

        retrieve_main(argv[1:])
    elif command == "serve":
        from mmgen_lightning.serve import main as serve_main

        serve_main(argv[1:])
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

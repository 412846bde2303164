"""Sampling as a service: checks of what a user asks for, generation, and the files it writes.

One path from a checkpoint and conditions to sample files, called alike by ``mmgen generate``
(``cli.py`` parses its flags into a :class:`Request`), by the ``mmgen serve`` page (which builds the
same :class:`Request` and shows :meth:`Request.command`, the flags that write the same bytes again),
and, for their knobs, seeds, input files and output paths, by ``mmgen evaluate`` and ``mmgen retrieve``.

Every check raises one of :mod:`mmgen_lightning.errors`' errors, which ``mmgen`` prints as one line.
Nothing a user already has is overwritten unless the request says so.

This module imports nothing heavy at import time (torch, PIL and the models are imported inside the
functions that use them), so ``mmgen --help`` and a bad flag return before ``import torch`` would finish.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgen_lightning.errors import CheckpointError, InputError, UsageError
from mmgen_lightning.knobs import KNOWN_KNOBS, SEED_LIMIT, check_sampling

#: what a request may generate: batch.MODALITIES without `label` (batch.py imports torch, too slow for --help)
GENERATED = ("image", "text", "audio", "video")
#: the conditions a request takes, in the order of `mmgen generate`'s flags; the files among them are read
#: by their modality
CONDITIONS = ("text", "image", "audio", "label")
FILE_CONDITIONS = ("image", "audio")
#: the sampling knobs `mmgen generate`, `mmgen evaluate` and the page offer; each family takes some of them
OFFERED_KNOBS = ("temperature", "top_k", "top_p", "guidance_scale", "guidance_start", "guidance_stop", "truncation",
                 "private_scale", "num_beams", "steps")
#: an image whose longer side is more than this many times its shorter one loses most of itself to the crop
FAR_FROM_SQUARE = 2.0
MANIFEST = "manifest.jsonl"


def warn(command: str, message: str) -> None:
    print(f"mmgen {command}: warning: {message}", file=sys.stderr)


# --- what a user gives: checked before any model is loaded -------------------------------------
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


def check_at_least_one(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be >= 1, got {value}", option, f"give {option} 1 or more")


def check_caption(text: str, option: str = "--text") -> None:
    if not text.strip():
        raise UsageError("the caption is empty", f"{option} {text!r}", "give a caption with words")


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


def check_checkpoint_file(path: str, option: str = "--ckpt") -> Path:
    ckpt = Path(path)
    if not ckpt.is_file():
        raise CheckpointError("checkpoint not found" if not ckpt.exists() else "is a folder, not a checkpoint file",
                              f"{option} {ckpt}", "give the .ckpt file `mmgen fit` wrote (e.g. CKPT_DIR/last.ckpt)")
    return ckpt


def check_config_file(path: str, option: str = "--config",
                      expected: str = "trainer, model and data sections, as configs/quickstart.yaml") -> None:
    """A YAML config that exists and holds a mapping (an empty file or one of only comments is named here;
    the options inside are checked by the parser that reads them)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UsageError("file not found" if not file.exists() else "is a folder, not a file", f"{option} {file}",
                         "check the path")
    try:
        content = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"not a YAML mapping ({' '.join(str(error).split())})", f"{option} {file}",
                         f"fix the YAML syntax; give a mapping with {expected}") from error
    if content is None:
        raise UsageError("the config is empty (no YAML content)", f"{option} {file}",
                         f"give a YAML mapping with {expected}")
    if not isinstance(content, dict):
        raise UsageError(f"the config is a YAML {type(content).__name__}, not a mapping", f"{option} {file}",
                         f"give a YAML mapping with {expected}")


def check_knobs(given: Mapping[str, Any]) -> dict[str, Any]:
    """The knob flags given (``None``: not given, the checkpoint's default), each checked against the range
    every family shares; the family's own names and ranges are checked once the model is loaded
    (:func:`~mmgen_lightning.knobs.check_sampling`)."""
    sampling = {name: value for name, value in given.items() if value is not None}
    for name, value in sampling.items():
        problem = KNOWN_KNOBS[name].problem(value)
        if problem:
            raise UsageError(f"{name} {problem}, got {value!r}", f"--{name}",
                             f"give --{name} as {KNOWN_KNOBS[name].describe()}")
    start, stop = sampling.get("guidance_start"), sampling.get("guidance_stop")
    if start is not None and stop is not None and start > stop:
        raise UsageError(f"the guidance interval is reversed: it starts at {start:g} and stops at {stop:g}",
                         f"--guidance_start {start:g} --guidance_stop {stop:g}",
                         "give guidance_start <= guidance_stop (times from 0 = noise to 1 = data)")
    return sampling


def warn_unread_caption(command: str, option: str, tokenizer, text: str) -> None:
    """Warn about what the model will not read of a caption: the part cut off and the unknown words."""
    shown = repr(text if len(text) <= 40 else text[:40] + "...")
    for problem in tokenizer.problems(text):
        warn(command, f"{option} {shown}: {problem}")


def check_scene_caption(command: str, model, text: str, option: str = "--text") -> None:
    """For a checkpoint trained on scenes (``datamodules/scenes.py``), refuse in one line a caption it cannot
    draw as said: an unknown colour or shape, a count outside 1-4, more objects than the canvas fits (its
    :func:`~mmgen_lightning.datamodules.scenes.parse_scene_caption` names the word). Text that names no colour,
    shape, size or count at all is drawn anyway, with the parser's warning, as free text to Shapes is."""
    if model.data_spec.get("dataset") != "scenes":
        return
    from mmgen_lightning.datamodules.scenes import FreeTextCaption, parse_scene_caption

    try:
        parse_scene_caption(text)
    except FreeTextCaption as error:
        warn(command, f"{option}: {error}")
    except ValueError as error:
        raise UsageError(str(error), option) from None


# --- one generation request -----------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What ``mmgen generate`` is asked for: ``num`` samples of ``to`` per condition row, into ``out``.

    Args:
        conditions: ``text`` (captions), ``image``/``audio`` (file paths), ``label`` (class indices), each a
            list; several kinds are paired in order, so every list has the same length.
        sampling: knob values by name (``OFFERED_KNOBS``); the family's defaults for the others.
        batch_size: samples per ``generate()`` call.
        overwrite: write into a folder that already holds files (an earlier run's are replaced).
        compile: ``torch.compile`` the networks before sampling.
    """

    ckpt: str
    to: str
    out: str
    conditions: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    num: int = 8
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    sampling: Mapping[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    compile: bool = False

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(name for name in CONDITIONS if self.conditions.get(name))

    def command(self) -> str:
        """The ``mmgen generate`` command line that makes this request (default flags left out)."""
        defaults = Request("", "", "")
        argv = ["--ckpt", str(self.ckpt), "--to", self.to]
        rows = zip(*(self.conditions[name] for name in self.sources))
        argv += [part for row in rows for name, value in zip(self.sources, row) for part in (f"--{name}", str(value))]
        argv += ["--num", str(self.num), "--out", str(self.out), "--seed", str(self.seed)]
        for name in ("batch_size", "device"):
            if getattr(self, name) != getattr(defaults, name):
                argv += [f"--{name}", str(getattr(self, name))]
        argv += [part for name, value in self.sampling.items() if value is not None
                 for part in (f"--{name}", str(value))]
        argv += [f"--{name}" for name in ("compile", "overwrite") if getattr(self, name)]
        return "mmgen generate " + shlex.join(argv)


def check_request(request: Request) -> dict[str, Any]:
    """Everything that can be checked without the model: counts, ranges, knob values, files, the output
    folder, the device; returns the knobs given."""
    check_at_least_one("--num", request.num)
    check_at_least_one("--batch_size", request.batch_size)
    check_seed(request.seed)
    sampling = check_knobs(request.sampling)
    counts = {name: len(request.conditions[name]) for name in request.sources}
    if len(set(counts.values())) > 1:
        raise UsageError(f"give the same number of each condition, got {counts}",
                         " ".join(f"--{name}" for name in counts), "conditions are paired in order")
    for text in request.conditions.get("text", ()):
        check_caption(text)
    for label in request.conditions.get("label", ()):
        if label < 0:
            raise UsageError(f"a class index must be >= 0, got {label}", f"--label {label}", "give 0 or more")
    for name in FILE_CONDITIONS:
        for path in request.conditions.get(name, ()):
            check_input_file(path, f"--{name}")
    check_checkpoint_file(request.ckpt)
    check_output_folder(request.out, overwrite=request.overwrite)
    check_device(request.device)
    return sampling


def load_model(ckpt: str, device: str = "cpu", compile: bool = False):
    """Any family from its checkpoint, on ``device``; an unreadable or foreign file is a :class:`CheckpointError`."""
    from mmgen_lightning.models.base import load_generator

    try:
        model = load_generator(ckpt, map_location=device).to(device)
    except (ValueError, KeyError) as error:
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        raise CheckpointError(message.replace(f"{ckpt}: ", ""), f"--ckpt {ckpt}",
                              "give a checkpoint written by `mmgen fit`") from error
    if compile:
        from mmgen_lightning.callbacks.compile import compile_networks

        compile_networks(model)
    return model


def check_direction(model, sources: tuple[str, ...], to: str) -> None:
    if not model.serves(sources, to):
        given = "+".join(sources) or "(no condition)"
        served = ", ".join(model.directions())
        raise UsageError(f"{type(model).__name__} cannot generate {given}->{to}", f"--to {to}",
                         f"it serves: {served}" if served else "it generates nothing (an Aligner scores and retrieves: "
                         "use `mmgen retrieve`, or `mmgen evaluate --aligner` to score another model)")


def read_conditions(model, conditions: Mapping[str, Sequence[Any]], command: str = "generate"):
    """``(batch, described)``: the conditions as a batch of ``k`` rows, read with the same readers (and checks)
    as training from a manifest, and each row's JSON-able description; warns about what the model will not see."""
    import torch

    from mmgen_lightning.modalities import get_modality

    given = {name: list(conditions[name]) for name in CONDITIONS if conditions.get(name)}
    rows = len(next(iter(given.values()))) if given else 1
    batch: dict[str, torch.Tensor] = {}
    if "text" in given:
        if model.tokenizer is None:
            raise UsageError(f"{type(model).__name__} has no tokenizer, so it takes no captions",
                             "--text", f"drop --text; it serves: {', '.join(model.directions())}")
        for text in given["text"]:
            check_scene_caption(command, model, text)
            warn_unread_caption(command, "--text", model.tokenizer, text)
        batch.update(model.tokenizer.encode(given["text"]))
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
                _warn_far_from_square(command, path)
        batch[name] = torch.stack(tensors)
    if "label" in given:
        classes = model.data_spec.get("num_classes")
        for label in given["label"]:
            if classes and label >= classes:
                raise UsageError(f"class {label} is out of range: the model knows {classes} classes",
                                 f"--label {label}", f"give 0 to {classes - 1}")
        batch["label"] = torch.tensor(given["label"], dtype=torch.long)
    described = [{name: values[row] for name, values in given.items()} for row in range(rows)]
    return batch, described


def _warn_far_from_square(command: str, path: str) -> None:
    """Warn when a picture loses most of itself to the centre crop its reader makes."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    if max(width, height) / max(1, min(width, height)) > FAR_FROM_SQUARE:
        warn(command, f"--image {path} is {width}x{height}, far from square: like training from a manifest, "
                      "only its centre square is used")


def generate(request: Request, command: str = "generate") -> list[dict[str, Any]]:
    """Check ``request``, load its checkpoint, sample and write one file per sample and ``out/manifest.jsonl``;
    returns the manifest rows. Each condition row is repeated ``num`` times, generated in chunks of
    ``batch_size`` (indices made per chunk, so a large ``num`` costs time, not memory); torch's global
    generator is seeded with ``seed``, so one request runs at a time in a process."""
    sampling = check_request(request)
    model = load_model(request.ckpt, request.device, request.compile)
    check_sampling(model, sampling, flag_style=True)
    check_direction(model, request.sources, request.to)
    conditions, described = read_conditions(model, request.conditions, command)

    import torch

    out = Path(request.out)
    if request.overwrite:
        clear_earlier_run(out)
    total = len(described) * request.num
    torch.manual_seed(request.seed)
    rows: list[dict[str, Any]] = []
    for start in range(0, total, request.batch_size):
        chunk = torch.arange(start, min(start + request.batch_size, total)) // request.num
        batch = {key: value[chunk] for key, value in conditions.items()}
        samples = model.generate(batch, num_samples=len(chunk), to=request.to, **sampling)
        rows += write_samples(samples, request.to, out, [described[i] for i in chunk.tolist()], request.seed,
                              model.data_spec, model.tokenizer, start_index=len(rows))
    return rows


# --- output files ---------------------------------------------------------------------------------
def write_samples(samples: Mapping[str, Any], to: str, out_dir: str | Path, conditions: Sequence[dict[str, Any]],
                  seed: int | None, spec: Mapping[str, Any] | None = None, tokenizer: Any = None,
                  start_index: int = 0) -> list[dict[str, Any]]:
    """Write one file per sample of modality ``to`` (by its modality's ``write``, named ``NNNNN_<to><extension>``)
    and append one row per sample to ``out_dir/manifest.jsonl``; returns the rows.

    ``conditions[i]`` is the JSON-able description of sample ``i``'s condition; ``spec`` gives the sizes
    a file needs (``sample_rate`` of audio) and ``tokenizer`` decodes captions.
    """
    from mmgen_lightning.modalities import get_modality

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modality, values = get_modality(to), samples[to]
    rows = []
    with open(out_dir / MANIFEST, "a", encoding="utf-8") as manifest:
        for offset in range(values.shape[0]):
            name = f"{start_index + offset:05d}_{to}{modality.extension}"
            row: dict[str, Any] = {"file": name, "to": to, "condition": conditions[offset], "seed": seed}
            row.update(modality.write(values[offset], out_dir / name, spec, tokenizer=tokenizer))
            manifest.write(json.dumps(row) + "\n")
            rows.append(row)
    return rows


def clear_earlier_run(out: Path) -> None:
    """Delete an earlier run's manifest.jsonl and the files it lists, so the new manifest describes only the
    new files (files the manifest does not list are left alone)."""
    manifest = out / MANIFEST
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


__all__ = ["CONDITIONS", "FILE_CONDITIONS", "GENERATED", "OFFERED_KNOBS", "Request", "check_at_least_one",
           "check_caption", "check_checkpoint_file", "check_config_file", "check_device", "check_input_file",
           "check_knobs", "check_output_file", "check_output_folder", "check_request", "check_scene_caption",
           "check_seed", "clear_earlier_run", "generate", "load_model", "read_conditions", "warn",
           "warn_unread_caption", "write_samples"]

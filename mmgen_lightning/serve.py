"""``mmgen serve``: a Gradio page to try checkpoints.

The page is built from what each checkpoint declares (``condition_modalities``, ``output_modalities``,
``serves()``): one tab per direction with the inputs its conditions need and the sampling knobs its
family's ``sample`` takes, plus a compare tab that runs several checkpoints on one caption. Each click
becomes a :class:`~mmgen_lightning.service.Request` run by the same service as ``mmgen generate``, and
the page shows ``Request.command()`` next to the samples: that command writes the same files again, byte
for byte (the checkpoint is read again for each run; the page's own copy only tells which tabs and knobs
to offer).

Under load (:func:`launch`): one request runs at a time (each seeds torch's global generator), at most
``queue_size`` more wait in Gradio's queue, and a request beyond that is refused at once with Gradio's
busy message (HTTP 503 "Queue is full"; the page says "This application is currently busy"); none is
dropped silently. Memory stays flat: Gradio keeps the state of the last :data:`SESSIONS_KEPT` browser
sessions only, and deletes its copies of output files after an hour. Listening on anything but loopback
needs a login (:func:`read_logins`: a file or :data:`AUTH_ENV`, never a command-line password), checked by
Gradio's own login page.

Gradio is an optional extra (``pip install mmgen-lightning[serve]``) imported only when the page is
built, so ``mmgen --help`` stays fast. Everything above :func:`build_app` works without Gradio.
"""

from __future__ import annotations

import dataclasses
import html
import ipaddress
import itertools
import os
import re
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgen_lightning.errors import MMGenError, UsageError
from mmgen_lightning.knobs import KNOWN_KNOBS
from mmgen_lightning.service import CONDITIONS, GENERATED, OFFERED_KNOBS, Request, generate, warn

# Gradio phones home for telemetry and version checks unless told not to; the page is local only.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

#: the largest upload the page reads (the models take small images and a few seconds of sound)
MAX_UPLOAD_MB = 20
#: the most samples one run may ask for
MAX_SAMPLES = 16
#: conditions uploaded as files, and what the page calls such a file
UPLOADS = {"image": "an image", "audio": "WAV/FLAC audio"}
#: the environment variable that may hold the page's login, ``user:password``
AUTH_ENV = "MMGEN_SERVE_AUTH"
#: browser sessions whose state Gradio keeps (the oldest is dropped beyond); the page keeps no state of its own,
#: and Gradio's default of 10,000 sessions at ~0.2 MB each grows the server by 2 GB under a stream of new visitors
SESSIONS_KEPT = 64


class UserError(ValueError):
    """A problem with what the page was asked for; shown in the page as one line, the server goes on."""


# --- directions and knobs ----------------------------------------------------------------------
def served_directions(model) -> list[tuple[tuple[str, ...], str]]:
    """The ``(sources, target)`` pairs the page offers for ``model``: for each output, unconditional, each
    single condition (all conditions together only where no single one is served), as far as
    ``model.serves`` accepts them and the service can ask for them. A source equal to the target
    (reconstruction) is offered only when it is the model's only way to that output (a VQVAE)."""
    conditions = tuple(m for m in CONDITIONS if m in model.condition_modalities)
    found: list[tuple[tuple[str, ...], str]] = []
    for target in (t for t in model.output_modalities if t in GENERATED):
        others = tuple(m for m in conditions if m != target)
        served = [s for s in [(), *((m,) for m in others)] if model.serves(s, target)]
        if not any(served) and len(others) > 1 and model.serves(others, target):
            served.append(others)
        if not served and target in conditions and model.serves((target,), target):
            served = [(target,)]
        found += [(s, target) for s in served]
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def direction_name(sources: Sequence[str], target: str) -> str:
    """``("text",), "image"`` -> ``"text->image"``; no sources -> ``"->image"`` (the batch contract's words)."""
    return f"{'+'.join(sources)}->{target}"


def sampling_knobs(model) -> dict[str, type]:
    """The offered knobs (``service.OFFERED_KNOBS``) that this family takes (its declared ``sampling_knobs``,
    ``knobs.py``), with their types."""
    from mmgen_lightning.knobs import sampling_knobs as family_knobs

    accepted = family_knobs(model)  # None: any keyword
    return {name: KNOWN_KNOBS[name].kind for name in OFFERED_KNOBS if accepted is None or name in accepted}


def check_upload(path: str | os.PathLike | None, kind: str, model) -> Path:
    """Refuse a missing, empty, oversized, undecodable or non-finite upload with one line naming it
    (read by its modality's reader, as ``mmgen generate`` reads it); return its path."""
    from mmgen_lightning.modalities import get_modality

    if path is None or str(path) == "":
        raise UserError(f"{kind}: upload a file first")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind}: the upload {path.name} is missing on the server; upload it again")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{kind}: the upload {path.name} is empty (0 bytes); choose another file")
    if size > MAX_UPLOAD_MB * 2**20:
        raise UserError(f"{kind}: the upload {path.name} is {size / 2**20:.1f} MB; the page takes files up to "
                        f"{MAX_UPLOAD_MB} MB")
    try:
        decoded = get_modality(kind).read(path, model.data_spec)
    except (ValueError, OSError) as error:
        if "NaN or Inf" in str(error):  # the shared reader refuses non-finite audio before it is a tensor
            raise UserError(f"{kind}: the upload {path.name} holds NaN or infinite values; choose another file") \
                from error
        raise UserError(f"{kind}: the upload {path.name} cannot be read as {UPLOADS[kind]}; choose another file") \
            from error
    if not bool(decoded.isfinite().all()):
        raise UserError(f"{kind}: the upload {path.name} holds NaN or infinite values; choose another file")
    return path


# --- one run -----------------------------------------------------------------------------------
@dataclass
class Run:
    """What one click made: the files, their decoded text, and the command that makes them again."""

    checkpoint: Path
    target: str
    folder: Path
    files: list[Path]
    command: str
    texts: list[str] = field(default_factory=list)

    @property
    def downloads(self) -> list[Path]:
        return [*self.files, self.folder / "manifest.jsonl"]


class Server:
    """Loads checkpoints (only from the allowed folders) and turns page requests into ``mmgen generate`` runs.

    Args:
        checkpoints: the ``--ckpt`` files given on the command line (a folder stands for every ``*.ckpt`` in it);
            the page loads checkpoints from these files' folders only.
        out_dir: folder each run's samples go to, one numbered sub-folder per run (uploads in ``uploads/``).
        device: torch device the models sample on.
    """

    def __init__(self, checkpoints: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 device: str = "cpu") -> None:
        self.checkpoints: list[Path] = []
        self.folders: list[Path] = []
        for given in checkpoints:
            path = Path(given).expanduser().resolve()
            if path.is_dir():
                found = sorted(path.rglob("*.ckpt"))
                if not found:
                    raise UserError(f"--ckpt {given}: the folder holds no *.ckpt file")
                self.folders.append(path)
                self.checkpoints += found
            elif path.is_file():
                self.folders.append(path.parent)
                self.checkpoints.append(path)
            else:
                raise UserError(f"--ckpt {given}: no such checkpoint file or folder")
        self.checkpoints = list(dict.fromkeys(self.checkpoints))
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.device = device
        self._models: dict[Path, Any] = {}
        # a run seeds torch's global generator, as `mmgen generate` does: one run at a time
        self._lock = threading.Lock()
        taken = [int(m.group(1)) for p in self.out_dir.glob("*") if (m := re.match(r"(\d+)-", p.name))]
        self._runs = itertools.count(max(taken, default=-1) + 1)

    # --- checkpoints -----------------------------------------------------------------------------
    def resolve(self, path: str | os.PathLike) -> Path:
        """A checkpoint path asked for through the page, refused unless it lies in a folder given on the
        command line (symbolic links and ``..`` resolved first)."""
        text = str(path).strip()
        if not text:
            raise UserError("checkpoint: give a path")
        resolved = Path(text).expanduser().resolve()
        if not any(resolved.is_relative_to(folder) for folder in self.folders):
            raise UserError(f"checkpoint {text}: refused, it is outside the folders this server was started "
                            f"with ({', '.join(str(f) for f in self.folders)})")
        if not resolved.is_file():
            raise UserError(f"checkpoint {text}: no such file")
        return resolved

    def model(self, path: str | os.PathLike):
        """The checkpoint's model (cached), to read its directions, knobs and sizes."""
        from mmgen_lightning.models.base import load_generator

        path = self.resolve(path)
        if path not in self._models:
            try:
                self._models[path] = load_generator(path, map_location="cpu")
            except (FileNotFoundError, KeyError, ValueError, TypeError) as error:
                message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
                raise UserError(f"checkpoint {path}: {message}") from error
        return self._models[path]

    def label(self, path: Path) -> str:
        """A short unique name for a checkpoint: its path below the folder all the allowed ones share."""
        common = Path(os.path.commonpath([*self.folders, *self.checkpoints]))
        return str(path.relative_to(common)) if path.is_relative_to(common) and path != common else str(path)

    # --- generation ------------------------------------------------------------------------------
    def generate(self, checkpoint: str | os.PathLike, target: str, conditions: dict[str, Any],
                 num_samples: int = 4, seed: int = 0, **knobs: Any) -> Run:
        """Sample ``num_samples`` of ``target`` from ``conditions`` (``text``: a caption, ``image``/``audio``:
        an uploaded file's path, ``label``: a class index) through the service, as ``mmgen generate`` does.

        Knobs set to ``None`` keep the family's default. Raises :class:`UserError` with one line for
        anything the page should show the user.
        """
        checkpoint = self.resolve(checkpoint)
        model = self.model(checkpoint)
        conditions = {k: v for k, v in conditions.items() if v is not None and str(v).strip() != ""}
        sources = tuple(m for m in CONDITIONS if m in conditions)
        if not model.serves(sources, target):
            raise UserError(f"{self.label(checkpoint)} cannot generate {direction_name(sources, target)}; "
                            f"it serves: {', '.join(model.directions())}")
        try:
            num_samples = int(num_samples)
            seed = int(seed)
        except (TypeError, ValueError) as error:
            raise UserError(f"number of samples and seed must be whole numbers ({error})") from error
        if not 1 <= num_samples <= MAX_SAMPLES:
            raise UserError(f"number of samples: give 1 to {MAX_SAMPLES}, got {num_samples}")
        offered = sampling_knobs(model)
        unknown = sorted(k for k, v in knobs.items() if v is not None and k not in offered)
        if unknown:
            raise UserError(f"{self.label(checkpoint)} takes no {', '.join(unknown)}; its knobs: "
                            f"{', '.join(offered) or 'none'}")

        with self._lock:
            name = _slug(direction_name(sources, target).replace("->", " to "))
            number = next(self._runs)
            folder = self.out_dir / f"{number:04d}-{name}"
            given: dict[str, list[Any]] = {}
            names: dict[str, tuple[str, str]] = {}  # copies of uploads -> their kind and given name
            for kind in sources:
                value = conditions[kind]
                if kind in UPLOADS:  # kept beside the runs, so the command can name it later
                    upload = check_upload(value, kind, model)
                    value = self.out_dir / "uploads" / f"{number:04d}-{kind}{upload.suffix.lower()}"
                    value.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(upload, value)
                    names[str(value)] = (kind, upload.name)
                    value = str(value)
                elif kind == "label":
                    value = int(float(value))
                given[kind] = [value]
            request = Request(str(checkpoint), target, str(folder), given, num=num_samples, seed=seed,
                              device=self.device,
                              sampling={k: offered[k](v) for k, v in knobs.items() if v is not None})
            try:
                rows = generate(request)
            except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
                raise UserError(_one_line(error, names)) from error
        # run again, the command replaces these files with the same bytes (the folder is no longer new)
        return Run(checkpoint, target, folder, [folder / row["file"] for row in rows],
                   dataclasses.replace(request, overwrite=True).command(), [row.get("text", "") for row in rows])

def _one_line(error: BaseException, names: dict[str, tuple[str, str]]) -> str:
    """``mmgen generate``'s error as the page shows it: where first, naming the files the user uploaded
    (``names``: copy -> (kind, the name it was uploaded as)), not the server's copies of them."""
    what, where, hint = (getattr(error, key, None) for key in ("what", "where", "hint"))
    if what is None:  # an error of the package's own code: its message, first line
        what = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    message = (f"{where}: " if where else "") + (str(what).splitlines() or [type(error).__name__])[0] + (
        f"; {hint}" if hint else "")
    for copy, (kind, name) in names.items():
        message = message.replace(f"--{kind} {copy}", f"{kind} upload {name}").replace(copy, name)
    return message


# --- the page ----------------------------------------------------------------------------------
KNOB_HELP = {"steps": "sampling steps", "guidance_scale": "classifier-free guidance scale",
             "temperature": "0 = most likely", "top_k": "keep the k most likely tokens",
             "top_p": "keep the smallest set of this mass", "num_beams": "beam width",
             "truncation": "latent noise scale / truncation"}


#: the gallery's own buttons, without "share" (it posts to Hugging Face): the page is local
LOCAL_BUTTONS = ["download", "download_all", "fullscreen"]
MISSING = {"text": "caption: type a caption first", "image": "image: upload an image first",
           "audio": "sound: upload or record one first", "label": "label: pick one first"}


def build_app(server: Server):
    """The Gradio ``Blocks`` page for ``server``'s checkpoints."""
    import gradio as gr

    from mmgen_lightning.modalities import REGISTRY, get_modality

    pictured = [name for name, modality in REGISTRY.items() if modality.pixels]  # what the compare tab shows

    def shown(error: UserError):
        return gr.Error(html.escape(str(error)), print_exception=False)

    class ImageUpload(gr.Image):
        """``gr.Image`` whose unreadable uploads (Gradio opens them before any handler runs) say so in one line."""

        is_template = True  # drawn by the frontend's plain Image component

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                name = getattr(payload, "orig_name", None) or "the upload"
                raise shown(UserError(f"image: {name} is not an image the server can read; choose a PNG, JPEG "
                                      f"or another image file")) from None

    def outputs_for(target: str, prefix: str) -> dict[str, Any]:
        parts: dict[str, Any] = {}
        kind = get_modality(target)
        if kind.pixels:  # PNGs, or GIFs for clips of frames
            parts["gallery"] = gr.Gallery(label=f"{target} samples" + (" (animated GIF)" if kind.frames else ""),
                                          columns=4, height=420, object_fit="contain", buttons=LOCAL_BUTTONS,
                                          elem_id=f"{prefix}-gallery")
        elif target == "audio":
            with gr.Row():
                parts["players"] = [gr.Audio(label=f"sample {i + 1}", visible=i == 0, type="filepath",
                                             buttons=["download"], elem_id=f"{prefix}-audio-{i}")
                                    for i in range(MAX_SAMPLES)]
        else:
            parts["text"] = gr.Textbox(label=f"{target} samples", lines=4, elem_id=f"{prefix}-text-out")
        parts["command"] = gr.Textbox(label="reproduce with", lines=2, buttons=["copy"], elem_id=f"{prefix}-command")
        parts["files"] = gr.File(label="download", file_count="multiple", elem_id=f"{prefix}-files")
        return parts

    def show(run: Run, parts: dict[str, Any]) -> list[Any]:
        values: list[Any] = []
        if "gallery" in parts:
            values.append([(str(p), f"sample {i + 1}") for i, p in enumerate(run.files)])
        if "players" in parts:
            values += [gr.update(value=str(run.files[i]), visible=True) if i < len(run.files) else
                       gr.update(value=None, visible=False) for i in range(MAX_SAMPLES)]
        if "text" in parts:
            values.append("\n".join(f"{i + 1}. {t}" for i, t in enumerate(run.texts)))
        return values + [run.command, [str(p) for p in run.downloads]]

    def flat(parts: dict[str, Any]) -> list[Any]:
        return [c for value in parts.values() for c in (value if isinstance(value, list) else [value])]

    #: one input per condition `mmgen generate` takes (CONDITIONS)
    input_widgets = {
        "text": lambda prefix, model: gr.Textbox(label="caption", placeholder="a red circle on the left",
                                                 elem_id=f"{prefix}-caption"),
        "image": lambda prefix, model: ImageUpload(label="image", type="filepath", sources=["upload"],
                                                   buttons=["fullscreen"], elem_id=f"{prefix}-image"),
        "audio": lambda prefix, model: gr.Audio(label="sound (WAV/FLAC, or record)", type="filepath",
                                                sources=["upload", "microphone"], buttons=["download"],
                                                elem_id=f"{prefix}-audio"),
        "label": lambda prefix, model: gr.Dropdown(label="label", value=0, elem_id=f"{prefix}-label",
                                                   choices=list(range(int(model.data_spec.get("num_classes", 10))))),
    }

    def direction_tab(checkpoint: Path, model, sources: tuple[str, ...], target: str) -> None:
        prefix = _slug(f"{server.label(checkpoint)}-{direction_name(sources, target).replace('->', '-to-')}")
        inputs: list[Any] = []
        with gr.Row():
            with gr.Column():
                for source in sources:
                    inputs.append(input_widgets[source](prefix, model))
                with gr.Row():
                    num = gr.Slider(1, MAX_SAMPLES, value=4, step=1, label="number of samples")
                    seed = gr.Number(value=0, precision=0, label="seed")
                knobs = sampling_knobs(model)
                knob_inputs = []
                if knobs:
                    with gr.Accordion("sampling knobs (empty = the family's default)", open=False):
                        with gr.Row():
                            knob_inputs = [gr.Number(value=None, label=name, info=KNOB_HELP.get(name),
                                                     precision=0 if kind is int else None,
                                                     elem_id=f"{prefix}-{name}") for name, kind in knobs.items()]
                button = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate")
            with gr.Column():
                parts = outputs_for(target, prefix)

        def run(*values):
            conditions = dict(zip(sources, values[:len(sources)]))
            count, seed_value, *knob_values = values[len(sources):]
            try:
                for source, value in conditions.items():  # this tab's direction needs every one of its inputs
                    if value is None or not str(value).strip():
                        raise UserError(MISSING.get(source, f"{source}: give one first"))
                made = server.generate(checkpoint, target, conditions, count, seed_value,
                                       **dict(zip(knobs, knob_values)))
            except UserError as error:
                raise shown(error) from None
            return show(made, parts)

        button.click(run, inputs=[*inputs, num, seed, *knob_inputs], outputs=flat(parts), api_name=False)

    def compare_tab() -> None:
        choices = [server.label(p) for p in server.checkpoints]
        by_label = dict(zip(choices, server.checkpoints))
        gr.Markdown("Several checkpoints on one caption, one row each (checkpoints that serve text->image or "
                    "text->video; a path typed below must lie in a folder this server was started with).")
        with gr.Row():
            with gr.Column():
                caption = gr.Textbox(label="caption", placeholder="a red circle on the left", elem_id="compare-caption")
                picked = gr.CheckboxGroup(choices=choices, value=choices, label="checkpoints",
                                          elem_id="compare-checkpoints")
                extra = gr.Textbox(label="more checkpoint paths (one a line)", lines=2, elem_id="compare-paths")
                with gr.Row():
                    num = gr.Slider(1, 8, value=4, step=1, label="samples each")
                    seed = gr.Number(value=0, precision=0, label="seed")
                button = gr.Button("Compare", variant="primary", elem_id="compare-generate")
            with gr.Column():
                gallery = gr.Gallery(label="side by side", columns=4, height=420, object_fit="contain",
                                     buttons=LOCAL_BUTTONS, elem_id="compare-gallery")
                command = gr.Textbox(label="reproduce with", lines=3, buttons=["copy"], elem_id="compare-command")
                files = gr.File(label="download", file_count="multiple", elem_id="compare-files")

        def run(text, names, paths, count, seed_value):
            try:
                if not str(text or "").strip():
                    raise UserError("caption: type a caption to compare on")
                wanted = [by_label[n] for n in names or []] + [server.resolve(p) for p in (paths or "").splitlines()
                                                               if p.strip()]
                if not wanted:
                    raise UserError("checkpoints: pick at least one")
                items, commands, downloads, skipped = [], [], [], []
                for checkpoint in dict.fromkeys(wanted):
                    model = server.model(checkpoint)
                    target = next((t for t in pictured if model.serves(("text",), t)), None)
                    if target is None:
                        skipped.append(server.label(checkpoint))
                        continue
                    made = server.generate(checkpoint, target, {"text": text}, count, seed_value)
                    items += [(str(p), f"{server.label(checkpoint)} #{i}") for i, p in enumerate(made.files)]
                    commands.append(made.command)
                    downloads += made.downloads
                if skipped:
                    gr.Warning(f"skipped (no text->image or text->video): {', '.join(skipped)}")
                if not items:
                    raise UserError("none of the picked checkpoints serves text->image or text->video")
            except UserError as error:
                raise shown(error) from None
            # one row per checkpoint: as many columns as samples each
            return gr.Gallery(value=items, columns=int(count)), "\n".join(commands), [str(p) for p in downloads]

        button.click(run, inputs=[caption, picked, extra, num, seed], outputs=[gallery, command, files],
                     api_name=False)

    with gr.Blocks(title="mmgen serve", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# mmgen serve\nTry the checkpoints below: each tab is one direction the checkpoint serves. "
                    f"Samples are written under `{server.out_dir}`; each run shows the `mmgen generate` command "
                    "that writes the same files.")
        with gr.Tabs():
            for checkpoint in server.checkpoints:
                try:
                    model = server.model(checkpoint)
                except UserError as error:
                    with gr.Tab(server.label(checkpoint)):
                        gr.Markdown(f"**Cannot load**: {error}")
                    continue
                with gr.Tab(f"{server.label(checkpoint)} ({type(model).__name__})"):
                    directions = served_directions(model)
                    if not directions:
                        gr.Markdown(f"{type(model).__name__} generates nothing `mmgen generate` can ask for "
                                    f"(it serves: {', '.join(model.directions()) or 'no direction'}).")
                    with gr.Tabs():
                        for sources, target in directions:
                            with gr.Tab(direction_name(sources, target)):
                                direction_tab(checkpoint, model, sources, target)
            with gr.Tab("compare", elem_id="compare-tab"):
                compare_tab()
    return app


# --- serving ---------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (a host name other than localhost may resolve to anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_logins(path: str | os.PathLike | None, env_value: str | None) -> list[tuple[str, str]]:
    """The logins the page asks for: the ``user:password`` lines of the file ``path`` (blank lines and ``#``
    comments skipped), else the one login in :data:`AUTH_ENV`'s value; empty when neither is given.
    Messages never show a password."""
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise UsageError("file not found" if not file.exists() else "is a folder, not a file",
                             f"--auth_file {file}", "give a file of user:password lines")
        if file.stat().st_mode & 0o077:
            warn("serve", f"--auth_file {file} can be read by other users (mode {file.stat().st_mode & 0o777:o}): "
                          f"chmod 600 {file}")
        lines = file.read_text(encoding="utf-8").splitlines()
        where = [f"--auth_file {file} line {number}" for number in range(1, len(lines) + 1)]
    elif env_value:
        lines, where = [env_value], [f"${AUTH_ENV}"]
    else:
        return []
    logins = []
    for line, place in zip(lines, where):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, colon, password = line.strip().partition(":")
        if not colon or not user.strip() or not password:
            raise UsageError("not a user:password login (the line is not shown: it may hold a password)", place,
                             "write one login a line as user:password")
        logins.append((user.strip(), password))
    if not logins:
        raise UsageError("holds no user:password login", where[0] if path is None else f"--auth_file {path}",
                         "write one login a line as user:password")
    return logins


def launch(server: Server, host: str = "127.0.0.1", port: int = 0, logins: Sequence[tuple[str, str]] = (),
           queue_size: int = 16):
    """Build the page for ``server`` and serve it in the background on ``host:port`` (0: a free port); with
    ``logins``, Gradio's login page admits only them. One request runs at a time and at most ``queue_size``
    wait; Gradio refuses the next at once as busy. Returns the Gradio app (``local_url``, ``close()``)."""
    app = build_app(server)
    port = port or _free_port(host)
    try:
        app.queue(default_concurrency_limit=1, max_size=queue_size).launch(
            server_name=host, server_port=port, share=False, show_error=True, quiet=True,
            ssr_mode=False, max_file_size=f"{MAX_UPLOAD_MB}mb", allowed_paths=[str(server.out_dir)], footer_links=[],
            auth=list(logins) or None, auth_message="mmgen serve: log in with a user:password of its --auth_file "
            f"or ${AUTH_ENV}", state_session_capacity=SESSIONS_KEPT, prevent_thread_lock=True)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port} ({error})", f"--port {port}", "give another --port") \
            from error
    except ValueError as error:
        # Gradio checks its own address with one 3 s request once started and calls a timeout "localhost is
        # not accessible" (advising share=True, which would publish the page): say what happened instead
        if "localhost is not accessible" not in str(error):
            raise
        app.close()
        raise MMGenError(f"the page did not answer on {host}:{port} within Gradio's start-up check (3 s): the "
                         "machine is too busy, or a proxy intercepts local addresses", "--host", "start it again, "
                         "or unset HTTP_PROXY/HTTPS_PROXY for local addresses (NO_PROXY=127.0.0.1,localhost)") \
            from error
    return app


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]

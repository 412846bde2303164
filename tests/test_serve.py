"""`mmgen serve` without a browser: directions and knobs read from checkpoints, runs that match their
`mmgen generate` command byte for byte, refused paths and bad uploads, and the page's own handlers."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image, ImageSequence

from mmgen_lightning.cli import main as mmgen
from mmgen_lightning.cli import serve_parser, start_serving
from mmgen_lightning.errors import UsageError
from mmgen_lightning.tokenizer import CaptionTokenizer
from mmgen_lightning.models import ConditionalGAN, MultimodalVAE, VQVAE
from mmgen_lightning.serve import (MAX_UPLOAD_MB, Server, UserError, build_app, check_upload, is_loopback, launch,
                                   read_logins, sampling_knobs, served_directions)

SPEC = {"dataset": "toy", "image_size": 16, "image_channels": 1, "max_text_length": 6, "sample_rate": 8000,
        "audio_length": 2000, "num_classes": 4}
GAN_SIZES = {"network": {"width": 8, "latent_dim": 8, "condition_dim": 8, "text_width": 16, "n_mels": 16}}


def save(model, path: Path) -> Path:
    """A checkpoint as `mmgen fit` writes it (weights, hyper-parameters, family, tokenizer)."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny checkpoints of three families in one folder: sampling needs no training to be exact."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("checkpoints")
    tokenizer = CaptionTokenizer.train(["class zero one two three"], max_length=6)
    spec = {**SPEC, "vocab_size": tokenizer.vocab_size}
    torch.manual_seed(0)
    vae = MultimodalVAE({**spec, "modalities": ["image", "text", "audio"]},
                        network={"latent_dim": 4, "width": 8, "text_width": 16, "n_mels": 16})
    text_gan = ConditionalGAN({**spec, "modalities": ["image", "text"]}, condition="text", **GAN_SIZES)
    video_gan = ConditionalGAN({**spec, "modalities": ["video", "text"], "num_frames": 4, "video_size": 16},
                               condition="text", output="video", **GAN_SIZES)
    vae.tokenizer = text_gan.tokenizer = video_gan.tokenizer = tokenizer
    label_gan = ConditionalGAN({**spec, "modalities": ["image", "label"]}, condition="label", **GAN_SIZES)
    vqvae = VQVAE({**spec, "modalities": ["image"]}, network={"num_codes": 16, "code_dim": 8, "width": 16})
    models = {"vae": vae, "text_gan": text_gan, "video_gan": video_gan, "label_gan": label_gan, "vqvae": vqvae}
    return {name: save(model, folder / f"{name}.ckpt") for name, model in models.items()}


@pytest.fixture
def server(checkpoints, tmp_path) -> Server:
    return Server([checkpoints["vae"].parent], tmp_path / "out")


def picture(path: Path, size: int = 16) -> Path:
    Image.fromarray(np.tile(np.arange(size, dtype=np.uint8) * 16, (size, 1))).save(path)
    return path


def test_directions_and_knobs_are_read_from_each_checkpoint(server, checkpoints):
    vae, label_gan, vqvae = (server.model(checkpoints[n]) for n in ("vae", "label_gan", "vqvae"))
    assert served_directions(vae) == [((), "image"), (("text",), "image"), (("audio",), "image"),
                                      ((), "text"), (("image",), "text"), (("audio",), "text"),
                                      ((), "audio"), (("text",), "audio"), (("image",), "audio")]
    assert served_directions(label_gan) == [(("label",), "image")]
    assert served_directions(vqvae) == [(("image",), "image")]  # reconstruction: its only direction
    assert set(sampling_knobs(vae)) == {"temperature", "top_k", "truncation"}
    assert set(sampling_knobs(label_gan)) == {"truncation"}
    assert sampling_knobs(vqvae) == {}
    assert served_directions(server.model(checkpoints["video_gan"])) == [(("text",), "video")]
    assert sorted(p.name for p in server.checkpoints) == ["label_gan.ckpt", "text_gan.ckpt", "vae.ckpt",
                                                          "video_gan.ckpt", "vqvae.ckpt"]


def test_a_run_and_its_command_write_the_same_bytes(server, checkpoints, tmp_path):
    run = server.generate(checkpoints["vae"], "image", {"text": "class one"}, num_samples=3, seed=7, truncation=0.5)
    assert [p.name for p in run.files] == ["00000_image.png", "00001_image.png", "00002_image.png"]
    assert all(Image.open(p).size == (16, 16) for p in run.files)
    rows = [json.loads(line) for line in (run.folder / "manifest.jsonl").read_text().splitlines()]
    assert rows[0]["condition"] == {"text": "class one"} and rows[0]["seed"] == 7
    assert run.downloads[-1].name == "manifest.jsonl"
    assert run.command.startswith(f"mmgen generate --ckpt {checkpoints['vae']} --to image --text 'class one' --num 3")
    assert "--seed 7" in run.command and "--truncation 0.5" in run.command

    made = {p.name: p.read_bytes() for p in run.files}
    for path in run.files:
        path.unlink()
    mmgen(shlex.split(run.command)[1:])
    assert {p.name: p.read_bytes() for p in run.files} == made
    other_seed = server.generate(checkpoints["vae"], "image", {"text": "class one"}, num_samples=3, seed=8,
                                 truncation=0.5)
    assert other_seed.folder != run.folder
    assert [p.read_bytes() for p in other_seed.files] != list(made.values())


def test_uploads_and_labels_become_the_commands_conditions(server, checkpoints, tmp_path):
    image = picture(tmp_path / "my drawing.png")
    run = server.generate(checkpoints["vae"], "text", {"image": str(image)}, num_samples=2, seed=0, temperature=1.0)
    kept = server.out_dir / "uploads" / "0000-image.png"
    assert kept.read_bytes() == image.read_bytes()  # the command names the kept copy, not the temporary upload
    assert f"--image {kept}" in run.command and len(run.texts) == 2
    texts = [p.read_text() for p in run.files]
    mmgen(shlex.split(run.command)[1:])
    assert [p.read_text() for p in run.files] == texts

    labelled = server.generate(checkpoints["label_gan"], "image", {"label": 2.0}, num_samples=2, seed=1)
    assert "--label 2 " in labelled.command and len(labelled.files) == 2

    sound = tmp_path / "tone.wav"
    soundfile.write(sound, 0.5 * np.sin(np.arange(2000) / 8000 * 2 * math.pi * 500), 8000)
    heard = server.generate(checkpoints["vae"], "image", {"audio": str(sound)}, num_samples=1)
    assert Image.open(heard.files[0]).size == (16, 16)


def test_bad_uploads_are_one_line_and_the_server_goes_on(server, checkpoints, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are words, not pixels")
    empty = tmp_path / "empty.png"
    empty.touch()
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as handle:  # a sparse 50 MB file: nothing is read before its size is refused
        handle.truncate(50 * 2**20)
    nan_wav = tmp_path / "nan.wav"
    soundfile.write(nan_wav, np.full(2000, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    cases = [("image", "text", not_an_image, r"^image: the upload notes\.png cannot be read as an image; choose "
                                             r"another file$"),
             ("image", "text", empty, r"image: the upload empty\.png is empty \(0 bytes\)"),
             ("image", "text", huge, rf"image: the upload huge\.png is 50\.0 MB; the page takes files up to "
                                     rf"{MAX_UPLOAD_MB} MB"),
             ("audio", "image", nan_wav, r"^audio: the upload nan\.wav holds NaN or infinite values; choose another "
                                         r"file$")]
    for kind, target, path, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            server.generate(checkpoints["vae"], target, {kind: str(path)}, num_samples=1)
        assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="image: upload a file first"):
        check_upload(None, "image", server.model(checkpoints["vae"]))
    with pytest.raises(UserError, match="cannot generate label->image; it serves: image|text|audio->image"):
        server.generate(checkpoints["vae"], "image", {"label": 1})
    with pytest.raises(UserError, match="vae.ckpt takes no num_beams; its knobs: temperature, top_k, truncation"):
        server.generate(checkpoints["vae"], "image", {"text": "class one"}, num_beams=2)
    with pytest.raises(UserError, match="number of samples: give 1 to 16, got 0"):
        server.generate(checkpoints["vae"], "image", {"text": "class one"}, num_samples=0)
    # still serving
    assert len(server.generate(checkpoints["vae"], "image", {"text": "class two"}, num_samples=2).files) == 2


def test_checkpoint_paths_outside_the_given_folders_are_refused(server, checkpoints, tmp_path):
    folder = checkpoints["vae"].parent
    outside = save(MultimodalVAE({**SPEC, "modalities": ["image"]}, network={"latent_dim": 4, "width": 8}),
                   tmp_path / "else.ckpt")
    (folder / "link.ckpt").symlink_to(outside)
    for path in (outside, folder / ".." / tmp_path.name / "else.ckpt", folder / "link.ckpt", "/etc/passwd"):
        with pytest.raises(UserError, match="refused, it is outside the folders this server was started with"):
            server.resolve(path)
    (folder / "link.ckpt").unlink()
    assert server.resolve(f"{folder}/sub/../vae.ckpt") == checkpoints["vae"]
    with pytest.raises(UserError, match="no such file"):
        server.resolve(folder / "missing.ckpt")
    only_one = Server([checkpoints["vae"]], tmp_path / "out2")
    assert only_one.checkpoints == [checkpoints["vae"]] and only_one.folders == [folder]
    with pytest.raises(UserError, match="--ckpt .*nope: no such checkpoint file or folder"):
        Server([tmp_path / "nope"], tmp_path / "out3")


def _handler(app, elem_id: str):
    """The page's click handler whose outputs include the component ``elem_id``."""
    for function in app.fns.values():
        if any(getattr(block, "elem_id", None) == elem_id for block in function.outputs):
            return function.fn
    raise AssertionError(f"no handler writes {elem_id}")


def test_the_page_has_a_tab_per_direction_and_its_handlers_speak_in_one_line(server, checkpoints):
    import gradio as gr

    app = build_app(server)
    tabs = [c["props"].get("label") for c in app.config["components"] if c["type"] == "tabitem"]
    assert "vae.ckpt (MultimodalVAE)" in tabs and "label_gan.ckpt (ConditionalGAN)" in tabs and "compare" in tabs
    assert tabs.count("text->image") == 2 and tabs.count("label->image") == 1 and tabs.count("image->image") == 1
    assert tabs.count("audio->text") == 1 and tabs.count("->image") == 1

    gallery, command, files = _handler(app, "vae-ckpt-text-to-image-gallery")("class three", 2, 0, None, None, 0.0)
    assert [Image.open(path).size for path, _ in gallery] == [(16, 16), (16, 16)]
    assert command.startswith("mmgen generate") and files[-1].endswith("manifest.jsonl")
    with pytest.raises(gr.Error, match="caption"):
        _handler(app, "vae-ckpt-text-to-image-gallery")("", 2, 0, None, None, None)

    *players, command, files = _handler(app, "vae-ckpt-text-to-audio-audio-0")("class one", 2, 3, None, None, None)
    shown_players = [p["value"] for p in players if p["visible"]]
    assert len(players) == 16 and len(shown_players) == 2 and "--seed 3" in command
    assert all((soundfile.info(p).samplerate, soundfile.info(p).frames) == (8000, 2000) for p in shown_players)

    clips, command, files = _handler(app, "video-gan-ckpt-text-to-video-gallery")("class two", 2, 0, None)
    assert len(clips) == 2 and "--to video" in command
    for path, _ in clips:  # looping GIFs of 4 frames at 8 fps (PIL merges equal frames, adding their durations)
        with Image.open(path) as clip:
            durations = [frame.info["duration"] for frame in ImageSequence.Iterator(clip)]
            assert (clip.format, clip.size, clip.info["loop"], sum(durations)) == ("GIF", (16, 16), 0, 500)

    compare = _handler(app, "compare-gallery")
    with pytest.warns(UserWarning, match=r"skipped \(no text->image or text->video\): vqvae.ckpt"):
        shown, commands, files = compare("class one", ["vae.ckpt", "text_gan.ckpt", "vqvae.ckpt"], "", 3, 0)
    assert len(shown.value["value"] if isinstance(shown.value, dict) else shown.value) == 6  # 2 checkpoints x 3
    assert len(commands.splitlines()) == 2 and "text_gan.ckpt" in commands
    with pytest.raises(gr.Error, match="refused, it is outside the folders"):
        compare("class one", [], "/etc/passwd", 1, 0)
    with pytest.raises(gr.Error, match="type a caption"):
        compare(" ", ["vae.ckpt"], "", 1, 0)


def test_help_stays_fast_and_a_bad_start_is_one_line(tmp_path, capsys):
    code = ("import sys; from mmgen_lightning.cli import main; main(['--help']); "
            "assert 'gradio' not in sys.modules and 'torch' not in sys.modules, 'heavy import on --help'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr[-2000:]
    for argv, code, message in (
            (["--ckpt", str(tmp_path / "missing.ckpt")], 1,
             rf"--ckpt {tmp_path}/missing.ckpt: no such checkpoint file or folder$"),
            (["--ckpt", str(tmp_path), "--port", "70000"], 2, r"--port must be in 0\.\.65535, got 70000"),
            (["--ckpt", str(tmp_path), "--queue_size", "0"], 2, r"--queue_size must be >= 1")):
        with pytest.raises(SystemExit) as stop:
            mmgen(["serve", *argv])
        err = capsys.readouterr().err
        assert stop.value.code == code and re.search(rf"^mmgen serve: error: .*{message}", err), err
        assert len(err.splitlines()) == 1


# --- under load and behind a login ------------------------------------------------------------------
def click(client, app, elem_id: str, data: list) -> tuple[int, str, str]:
    """One click of the page's handler that writes ``elem_id``, sent as the browser sends it (Gradio's queue):
    ``(HTTP status of the join, session, the join's answer)``."""
    fn_index = next(index for index, function in app.fns.items()
                    if any(getattr(block, "elem_id", None) == elem_id for block in function.outputs))
    session = uuid.uuid4().hex
    answer = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                         "event_data": None, "trigger_id": None})
    return answer.status_code, session, answer.text


def outcome(client, session: str) -> dict:
    """The ``process_completed`` message of the one event of ``session`` (its output, or its error)."""
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["msg"] == "process_completed":
                return json.loads(line[5:])
    raise AssertionError(f"session {session} ended without completing")


def test_a_full_queue_refuses_at_once_as_busy_and_loses_no_request(server):
    import httpx

    running, release = threading.Event(), threading.Event()
    generate = server.generate

    def held(*args, **kwargs):  # the first request holds the model until the queue has been filled
        running.set()
        assert release.wait(60)
        return generate(*args, **kwargs)

    server.generate = held
    app = launch(server, "127.0.0.1", 0, queue_size=2)
    try:
        with httpx.Client(base_url=app.local_url, timeout=60) as client:
            caption = ["class one", 1, 0, None, None, None]
            joined = [click(client, app, "vae-ckpt-text-to-image-gallery", caption)]
            assert running.wait(60)
            joined += [click(client, app, "vae-ckpt-text-to-image-gallery", caption) for _ in range(3)]
            assert [status for status, _, _ in joined] == [200, 200, 200, 503]
            assert json.loads(joined[-1][2]) == {"detail": "Queue is full. Max size is 2 and size is 2."}
            release.set()
            done = [outcome(client, session) for _, session, _ in joined[:3]]
        assert all(message["success"] for message in done)
        assert len(list(server.out_dir.glob("*-text-to-image/00000_image.png"))) == 3  # every accepted one ran
    finally:
        release.set()
        app.close()


def test_a_login_is_asked_and_a_wrong_password_refused(server, tmp_path):
    import httpx

    app = launch(server, "127.0.0.1", 0, logins=[("ann", "s3cret pass")])
    try:
        with httpx.Client(base_url=app.local_url, timeout=60) as client:
            assert client.get("/config").status_code == 401
            wrong = client.post("/login", data={"username": "ann", "password": "s3cret"})
            assert (wrong.status_code, wrong.json()) == (400, {"detail": "Incorrect credentials."})
            assert client.post("/login", data={"username": "bob", "password": "s3cret pass"}).status_code == 400
            assert client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "ann", "password": "s3cret pass"}).status_code == 200
            assert client.get("/config").status_code == 200
            status, session, _ = click(client, app, "vae-ckpt-text-to-image-gallery", ["class two", 1, 0, None, None,
                                                                                       None])
            assert status == 200 and outcome(client, session)["success"]
    finally:
        app.close()


def test_logins_come_from_a_file_or_the_environment_never_from_a_flag(tmp_path, capsys):
    logins = tmp_path / "logins"
    logins.write_text("# who may use the page\nann:s3cret:with:colons\n\nbob: spaced pass\n")
    logins.chmod(0o600)
    assert read_logins(logins, "ignored:when-a-file-is-given") == [("ann", "s3cret:with:colons"),
                                                                   ("bob", " spaced pass")]
    assert capsys.readouterr().err == ""
    logins.chmod(0o644)
    read_logins(logins, None)
    assert f"--auth_file {logins} can be read by other users (mode 644): chmod 600" in capsys.readouterr().err
    assert read_logins(None, "carol:pw") == [("carol", "pw")] and read_logins(None, None) == []
    for text, where in (("ann\n", "line 1"), ("# none\n\n", "holds no user:password login"), ("ann:\n", "line 1"),
                        (":pw\n", "line 1")):
        logins.write_text(text)
        with pytest.raises(UsageError, match=where) as caught:
            read_logins(logins, None)
        assert "pw" not in str(caught.value)  # a password is never echoed
    with pytest.raises(UsageError, match=r"\$MMGEN_SERVE_AUTH"):
        read_logins(None, "no-colon-here")
    options = {option for action in serve_parser()._actions for option in action.option_strings}
    assert not any("pass" in option for option in options)
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("my-host")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.4"])
def test_listening_beyond_loopback_without_a_login_is_refused_in_one_line(checkpoints, tmp_path, capsys,
                                                                           monkeypatch, host):
    monkeypatch.delenv("MMGEN_SERVE_AUTH", raising=False)
    with pytest.raises(SystemExit) as stop:
        mmgen(["serve", "--ckpt", str(checkpoints["vae"]), "--host", host, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == (
        f"mmgen serve: error: listening on {host} opens the page to other machines, and no login is set "
        f"(--host {host}): give --auth_file FILE (user:password lines, chmod 600) or set MMGEN_SERVE_AUTH="
        "user:password, or listen on 127.0.0.1\n")
    assert not (tmp_path / "out").exists()


def test_the_command_starts_behind_a_login_from_the_environment(checkpoints, tmp_path, capsys, monkeypatch):
    import httpx

    monkeypatch.setenv("MMGEN_SERVE_AUTH", "ann:from the environment")
    app = start_serving(["--ckpt", str(checkpoints["vae"]), "--port", "0", "--out", str(tmp_path / "out"),
                         "--queue_size", "4"])
    try:
        assert "login required; one request at a time, 4 more may wait" in capsys.readouterr().out
        with httpx.Client(base_url=app.local_url, timeout=60) as client:
            assert client.post("/login", data={"username": "ann", "password": "from"}).status_code == 400
            right = client.post("/login", data={"username": "ann", "password": "from the environment"})
            assert right.status_code == 200
    finally:
        app.close()


def test_a_scenes_checkpoint_refuses_captions_it_cannot_draw_and_warns_on_free_text(tmp_path, capsys):
    """`mmgen generate` and the page, on a tiny untrained FlowMatching of scenes: a caption naming an unknown
    colour or shape, a count above 4 or five objects is one line (exit 2, nothing written); free text is drawn,
    with the scenes parser's warning; a scene caption is drawn without one."""
    from mmgen_lightning.datamodules.scenes import ScenesDataModule
    from mmgen_lightning.models.flow import FlowMatching

    data = ScenesDataModule(train_size=8, val_size=8, test_size=8, heldout_size=8)
    torch.manual_seed(0)
    model = FlowMatching(data.data_spec, condition="text", sampling={"steps": 2},
                         network={"width": 32, "depth": 1, "num_heads": 2, "patch_size": 8, "condition_layers": 1})
    model.tokenizer = data.tokenizer
    ckpt = save(model, tmp_path / "scenes.ckpt")

    def generate(caption: str, out: str) -> tuple[int, str]:
        try:
            mmgen(["generate", "--ckpt", str(ckpt), "--to", "image", "--text", caption, "--num", "1",
                   "--out", str(tmp_path / out)])
            status = 0
        except SystemExit as stop:
            status = stop.code
        return status, capsys.readouterr().err

    refused = {"a magenta circle": ": unknown colour 'magenta'", "a red hexagon": ": unknown shape 'hexagon'",
               "five red circles": ": count 'five' is outside 1-4",
               "a red circle, a blue square, a green circle and two red squares": " names 5 objects; the canvas "
                                                                                   "fits at most 4"}
    for index, (caption, reason) in enumerate(refused.items()):
        status, err = generate(caption, f"refused{index}")
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"mmgen generate: error: caption {caption!r}{reason}") and "(--text)" in err, err
        assert not (tmp_path / f"refused{index}").exists()
    status, err = generate("a cat asleep on a sofa", "free")
    assert status == 0 and "mmgen generate: warning: --text: caption 'a cat asleep on a sofa' is not a scene " \
                           "caption: it names no colour, shape, size or count" in err, err
    assert len(list((tmp_path / "free").glob("*.png"))) == 1
    status, err = generate("two blue squares", "scene")
    assert status == 0 and "not a scene caption" not in err and len(list((tmp_path / "scene").glob("*.png"))) == 1

    server = Server([tmp_path], tmp_path / "served")
    with pytest.raises(UserError, match=r"^--text: caption 'five red circles': count 'five' is outside 1-4[^\n]*$"):
        server.generate(ckpt, "image", {"text": "five red circles"}, 1)
    assert len(server.generate(ckpt, "image", {"text": "a red circle above a blue square"}, 2).files) == 2

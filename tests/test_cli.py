"""The `mmgen` command: help for every subcommand, fit -> generate -> manifest, clear errors."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import mmgen_lightning
from mmgen_lightning.cli import main

PACKAGE = Path(mmgen_lightning.__file__).parent
SUBCOMMANDS = ["fit", "validate", "test", "predict", "generate", "evaluate"]


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_help_for_every_subcommand(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out.lower()
    if subcommand == "generate":
        for flag in ("--ckpt", "--to", "--text", "--image", "--audio", "--label", "--num", "--out", "--seed"):
            assert flag in out


def test_top_level_help_lists_subcommands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def test_console_script_is_installed():
    out = subprocess.run([str(Path(sys.executable).parent / "mmgen"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "generate" in out


def test_unknown_subcommand_names_the_allowed_ones(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("mmgen: error: unknown subcommand 'train': allowed: fit, validate, test, "
                                       "predict, generate, evaluate, shard, retrieve, serve (see `mmgen --help`)\n")


def test_help_and_bad_arguments_import_neither_torch_nor_lightning():
    """Start-up: `mmgen --help`, `mmgen generate --help` and a bad argument return before the heavy imports."""
    code = ("import sys; from mmgen_lightning.cli import main\n"
            "for argv in (['--help'], ['generate', '--help'], ['generate', '--ckpt', 'x', '--to', 'image', '--out', "
            "'o', '--num', '0'], ['nope']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'numpy', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert "mmgen generate: error: --num must be >= 1" in result.stderr


def imported_modules(source: str, module: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names, at any depth (inside functions
    too), relative imports resolved against ``module``'s package; ``from a import b`` counts ``a`` and ``a.b``."""
    package = module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_nothing_in_the_package_imports_the_cli():
    """The CLI parses and prints; generation lives in the service. Only the console script imports cli.py."""
    # dotted names keep `.__init__`, so relative imports in a package's __init__ resolve against the package
    modules = {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path for path in PACKAGE.rglob("*.py")}
    assert "mmgen_lightning.service" in modules and len(modules) > 30
    importers = sorted(name for name, path in modules.items() if name != "mmgen_lightning.cli"
                       and "mmgen_lightning.cli" in imported_modules(path.read_text(), name))
    assert importers == []
    # the check itself sees an import inside a function, a relative one and a from-import of the name
    assert "mmgen_lightning.cli" in imported_modules("def f():\n    from mmgen_lightning.cli import main\n", "x.y")
    assert "mmgen_lightning.cli" in imported_modules("from .. import cli\n", "mmgen_lightning.metrics.report")
    assert "mmgen_lightning.cli" in imported_modules("from . import cli\n", "mmgen_lightning.serve")
    assert "mmgen_lightning.cli" in imported_modules("from .cli import main\n", "mmgen_lightning.__init__")
    assert "mmgen_lightning.cli" not in imported_modules("import mmgen_lightning.service\n", "x.y")


def _config(tmp_path: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": 6, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run"), "limit_val_batches": 1,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
        "model": {"class_path": "mmgen_lightning.models.MultimodalVAE",
                  "init_args": {"network": {"latent_dim": 4, "width": 8, "text_width": 16}}},
        "data": {"class_path": "tests.conftest.ToyDataModule", "init_args": {"size": 32}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_fit_then_generate_writes_files_and_manifest(tmp_path):
    main(["fit", "--config", str(_config(tmp_path))])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "samples"
    main(["generate", "--ckpt", str(ckpt), "--to", "image", "--text", "class one", "--text", "class two",
          "--num", "3", "--out", str(out), "--seed", "7"])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert rows[0] == {"file": "00000_image.png", "to": "image", "condition": {"text": "class one"}, "seed": 7}
    assert rows[-1]["condition"] == {"text": "class two"}
    assert all((out / row["file"]).is_file() for row in rows)
    main(["generate", "--ckpt", str(ckpt), "--to", "text", "--image", str(out / rows[0]["file"]), "--num", "2",
          "--out", str(tmp_path / "captions")])
    captions = [json.loads(line) for line in (tmp_path / "captions" / "manifest.jsonl").read_text().splitlines()]
    assert [row["file"] for row in captions] == ["00000_text.txt", "00001_text.txt"]
    assert all(isinstance(row["text"], str) for row in captions)


def test_generate_compile_samples_the_same_images_through_compiled_networks(tmp_path, monkeypatch):
    import mmgen_lightning.callbacks.compile as compile_module

    compiled = []
    real = compile_module.compile_networks

    def eager_backend(model, **options):  # dynamo traces the networks; the eager backend skips codegen time
        compiled.extend(real(model, backend="eager"))
        return compiled

    monkeypatch.setattr(compile_module, "compile_networks", eager_backend)
    main(["fit", "--config", str(_config(tmp_path))])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        main(["generate", "--ckpt", ckpt, "--to", "image", "--text", "class one", "--num", "2", "--seed", "3",
              "--out", str(tmp_path / name), *extra])
    assert compiled, "--compile compiled no network"
    for index in range(2):
        eager, fast = (np.asarray(Image.open(tmp_path / name / f"{index:05d}_image.png"), dtype=int)
                       for name in ("eager", "compiled"))
        assert np.abs(eager - fast).max() <= 1  # the same samples, up to float rounding of one grey level


def test_generate_errors_are_clear(tmp_path, capsys):
    main(["fit", "--config", str(_config(tmp_path))])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    capsys.readouterr()
    (tmp_path / "bad.png").write_text("not a picture")
    cases = [  # (arguments, exit status, the one error line)
        (["--ckpt", ckpt, "--to", "image", "--label", "1"], 2,
         "MultimodalVAE cannot generate label->image (--to image): it serves: "),
        (["--ckpt", ckpt, "--to", "image", "--text", "class one", "--text", "class two", "--image", "a.png"], 2,
         "give the same number of each condition, got {'text': 2, 'image': 1} (--text --image): conditions are "
         "paired in order"),
        (["--ckpt", str(tmp_path / "nope.ckpt"), "--to", "image"], 1,
         f"checkpoint not found (--ckpt {tmp_path / 'nope.ckpt'}): give the .ckpt file"),
        (["--ckpt", ckpt, "--to", "text", "--image", str(tmp_path / "bad.png")], 1,
         f"cannot decode the image (cannot identify image file '{tmp_path / 'bad.png'}') (--image "
         f"{tmp_path / 'bad.png'}): give a readable, finite image file"),
    ]
    for arguments, code, message in cases:
        with pytest.raises(SystemExit) as stop:
            main(["generate", *arguments, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert stop.value.code == code and err.startswith(f"mmgen generate: error: {message}"), err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()

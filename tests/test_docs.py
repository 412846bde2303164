"""The documentation site (docs/, mkdocs.yml) builds in strict mode, and the README's and the guides' command
blocks say whether they run (tests/test_docs_commands.py runs those that do).

Strict mode turns every warning into a failure: a link to a missing page or anchor, an API reference
(``::: module.Object``) to something that does not exist, a snippet of a file that is gone, a page left out
of the nav. Every shell block of the guides starts with a marker: ``# docs-test: run`` for the commands
that take under a minute together, which run here in order, in a copy of the repository, as a user of a
fresh clone with the virtualenv activated would run them; ``# docs-test: skip, <why>`` for the others
(training for minutes, a server, a cluster), whose paths into the repository are still checked.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHELL = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"#\s*docs-test:\s*(?P<verdict>run|skip)\b,?\s*(?P<why>.*)")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$",
                   re.MULTILINE | re.DOTALL)
#: repository paths a command may name; each must exist
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|examples|benchmarks|docs)/[\w./-]+\.(?:yaml|sh|sbatch|py|md))")
#: packages whose every public module the API reference must render (objectives renders its submodules itself)
REFERENCED_PACKAGES = ("callbacks", "datamodules", "metrics", "modalities", "models")


def nav_pages() -> list[Path]:
    """The pages in the order of the site's navigation."""
    def walk(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            for item in entry:
                yield from walk(item)
        elif isinstance(entry, dict):
            for item in entry.values():
                yield from walk(item)

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return [DOCS / page for page in walk(config["nav"])]


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """``(info string, body)`` of every fenced block of a page, outdented."""
    blocks = []
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        blocks.append((match["info"], body))
    return blocks


def marked(info: str, body: str) -> re.Match | None:
    first = body.split("\n", 1)[0].strip()
    return MARKER.fullmatch(first)


def shell_commands() -> list[tuple[Path, str, str]]:
    """``(page, info, body)`` of every command block of the README and the site: shell blocks, and blocks of another language marked to run;
    a block that only includes a file (``--8<--``) shows that file and runs nothing."""
    found = []
    for page in [ROOT / "README.md", *nav_pages()]:
        for info, body in code_blocks(page):
            if body.lstrip().startswith("--8<--"):
                continue
            if info in SHELL or marked(info, body):
                found.append((page, info, body))
    return found


def test_every_command_block_says_whether_it_runs():
    unmarked = [f"{page.relative_to(ROOT)}: {body.splitlines()[0]!r}" for page, info, body in shell_commands()
                if not marked(info, body) or (marked(info, body)["verdict"] == "skip" and not marked(info, body)["why"])]
    assert not unmarked, ("each shell block must start with '# docs-test: run' or '# docs-test: skip, <why>': "
                          + "; ".join(unmarked))


def test_paths_in_commands_exist():
    missing = [f"{page.relative_to(ROOT)}: {path}" for page, info, body in shell_commands()
               for path in REPO_PATH.findall(body.split("\n", 1)[1] if "\n" in body else "")
               if not (ROOT / path).exists()]
    assert not missing, f"commands name files that are not in the repository: {missing}"


def test_reference_renders_every_public_module():
    directives = set()
    for page in (DOCS / "reference").rglob("*.md"):
        directives |= set(re.findall(r"^::: (mmgen_lightning[\w.]*)", page.read_text(encoding="utf-8"), re.MULTILINE))
    modules = [f"mmgen_lightning.{package}.{file.stem}" for package in REFERENCED_PACKAGES
               for file in sorted((ROOT / "mmgen_lightning" / package).glob("*.py")) if not file.stem.startswith("_")]
    assert "mmgen_lightning.objectives" in directives
    left_out = [module for module in modules if module not in directives]
    assert not left_out, f"add a '::: module' line to a page of docs/reference/ for {left_out}"


def mkdocs_or_fail():
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: `make docs` installs the docs extra (pip install -c constraints.txt "
                    "-e '.[docs]')")


def test_site_builds_in_strict_mode(tmp_path):
    mkdocs_or_fail()
    site = tmp_path / "site"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", "mkdocs.yml",
                             "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    problems = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0, "\n".join(problems) or result.stderr[-3000:]
    # the API reference was rendered from the docstrings: their Args sections became parameter tables (also
    # where the class docstring is only that section) and their Sphinx roles links (docs/hooks/docstrings.py)
    flow = (site / "reference" / "models" / "flow" / "index.html").read_text(encoding="utf-8")
    assert 'id="mmgen_lightning.models.flow.FlowMatching"' in flow and "Sizes of the velocity network" in flow
    assert "Args:" not in flow and ":class:`" not in flow
    assert 'href="../../optim/#mmgen_lightning.models.optim.Optimization"' in flow
    # the recipes are the files in configs/, included as they are
    first_line = (ROOT / "configs" / "flow" / "shapes.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert html.escape(first_line, quote=False) in (site / "families" / "flow" / "index.html").read_text(encoding="utf-8")
    print(f"built in {time.monotonic() - started:.1f} s")

"""The README's and the guides' quick commands (blocks marked ``# docs-test: run``) run as written, in order,
in a copy of the repository, as a user of a fresh clone with the virtualenv activated would run them."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.test_docs import ROOT, marked, shell_commands


def repository_copy(destination: Path) -> Path:
    """The files a clone would hold (tracked, and new files git does not ignore), copied to ``destination``."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def test_quick_commands_run(tmp_path):
    blocks = [(page, info, body) for page, info, body in shell_commands() if marked(info, body)["verdict"] == "run"]
    assert blocks, "no block of the guides is marked '# docs-test: run'"
    clone = repository_copy(tmp_path / "clone")
    # as after `source .venv/bin/activate` in that clone: its mmgen first on PATH, its package imported
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(clone), "MMGEN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for page, info, body in blocks:
        command = [sys.executable, "-c", body] if info == "python" else ["bash", "-euo", "pipefail", "-c", body]
        started, cpu = time.monotonic(), children_cpu_seconds()
        result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=300, check=False)
        where = f"{page.relative_to(ROOT)}, block {body.splitlines()[1]!r}"
        assert result.returncode == 0, f"{where} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}"
        print(f"{where}: {time.monotonic() - started:.1f} s, {children_cpu_seconds() - cpu:.1f} CPU s")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

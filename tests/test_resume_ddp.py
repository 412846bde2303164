"""A 2-process DDP run (CPU, gloo) whose second process is SIGKILLed mid-epoch: the first exits soon after with
one line that says what happened and how to go on (no hang, no stack), and ``mmgen fit --ckpt_path last``
resumes the job, on 2 processes again, from its last checkpoint."""

import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch

from tests.resume_checks import checkpoints_in, fit_config

STEPS, EVERY, KILL_AT = 8, 3, 7
#: the process group's timeout, set through Lightning's DDPStrategy (the default is 30 minutes): a process that hangs
#: instead of dying stops the others after this long. It bounds the start too (the first process waits this long
#: for the others to join), so it is longer than a start on a busy machine. A dead process is noticed sooner: its
#: sockets close, and the next collective fails at once.
TIMEOUT_S = 120
NOTICED_WITHIN_S = 30
DDP = {"devices": 2, "strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                                  "init_args": {"process_group_backend": "gloo", "timeout": str(timedelta(seconds=TIMEOUT_S))}}}


def mmgen_fit(*args: str, timeout: float = 2 * TIMEOUT_S + 60) -> subprocess.CompletedProcess:
    """``mmgen fit ARGS`` in a fresh process with one torch thread per process; Lightning starts the second."""
    return subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_dead_rank_stops_the_other_with_one_line_and_the_job_resumes(tmp_path):
    died = tmp_path / "rank1_died_at"
    kill = {"class_path": "tests.resume_checks.KillAt", "init_args": {"step": KILL_AT, "rank": 1, "record": str(died)}}
    start = time.monotonic()
    result = mmgen_fit("--config", fit_config(tmp_path, STEPS, EVERY, kill, **DDP))
    ended = time.time()
    print(f"killed run: {time.monotonic() - start:.1f} s, rank 0 ended {ended - float(died.read_text()):.1f} s "
          "after rank 1 died")
    assert "MEMBER: 2/2" in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("mmgen fit: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert re.search(r"another process of this distributed run died or stopped answering \(.+\), so this one stopped "
                     r"too: resume the run from its last checkpoint \(--ckpt_path last", errors[0]), errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert ended - float(died.read_text()) < NOTICED_WITHIN_S
    assert checkpoints_in(tmp_path / "ckpt") == {"step=3.ckpt", "step=6.ckpt", "last.ckpt"}

    start = time.monotonic()
    result = mmgen_fit("--config", fit_config(tmp_path, STEPS, EVERY, **DDP), "--ckpt_path", "last")
    print(f"resumed run: {time.monotonic() - start:.1f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr and f"Restored all states from the checkpoint at {tmp_path / 'ckpt' / 'last.ckpt'}" \
        in result.stderr, result.stderr[-3000:]
    assert "random states come from" not in result.stderr  # both processes' random states were restored
    final = torch.load(tmp_path / "final.ckpt", weights_only=True)
    assert final["global_step"] == STEPS and int(final["averaging_state"]["n_averaged"]) == STEPS - 2

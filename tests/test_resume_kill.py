"""A real kill: an ``mmgen fit`` process SIGKILLed in the middle of an epoch (after its step 3 and step 6
checkpoints), then resumed with ``mmgen fit --ckpt_path last``, ends with the live weights, the EMA weights and
the rest of the training state of a run that never stopped."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mmgen_lightning.cli import main
from tests.resume_checks import assert_same_state, checkpoints_in, fit_config

STEPS, EVERY, KILL_AT = 8, 3, 7

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_sigkilled_fit_resumed_with_ckpt_path_last_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    kill = {"class_path": "tests.resume_checks.KillAt", "init_args": {"step": KILL_AT}}
    command = [sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", fit_config(killed, STEPS, EVERY, kill)]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    main(["fit", "--config", fit_config(tmp_path / "straight", STEPS, EVERY)])  # meanwhile, on the other core
    _, stderr = process.communicate(timeout=240)
    print(f"killed run: {time.monotonic() - start:.1f} s")
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    # killed before step 7: the periodic checkpoints of steps 3 and 6 and last.ckpt (step 6) are there, no final state
    assert checkpoints_in(killed / "ckpt") == {"step=3.ckpt", "step=6.ckpt", "last.ckpt"}
    assert not (killed / "final.ckpt").exists()
    assert torch.load(killed / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6

    start = time.monotonic()
    main(["fit", "--config", fit_config(killed, STEPS, EVERY), "--ckpt_path", "last"])
    print(f"resumed run: {time.monotonic() - start:.1f} s")
    compared = assert_same_state(killed / "final.ckpt", tmp_path / "straight" / "final.ckpt")
    assert {"state_dict", "current_model_state", "averaging_state", "optimizer_states", "random_state"} <= set(compared)

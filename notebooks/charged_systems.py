# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Charged dimers: what a short-range model cannot see
#
# Two rigid molecules at a separation d interact through their charges long after
# their atoms have left each other's receptive field (2 x cutoff).  This notebook
# trains a tiny short-range model (`sr`) and a tiny latent-charge model (`q`, with the
# total-charge shift of docs/total_charge.md) on dimers at d < 12 A and plots the
# interaction energy and the force between the molecules against d.
#
# Data: the charged dimers of `cacelrfit_lode_dimers` (cation-anion pair `CC`) when
# `../shared/data` is present; otherwise a synthetic stand-in labelled with fixed
# point charges (an NH3-like cation, Q = +1, and an OH-like anion, Q = -1).
# Set `POLMP_SMOKE=1` for the tiny CI setting (a few epochs: the curves are then only
# a smoke test, not a result).

# %%
import os
import pathlib
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

from polmp.config.schema import DataConfig, RunConfig, TrainingConfig
from polmp.data.batching import frames_to_graph
from polmp.data.io import read_frames
from polmp.data.schema import Frame
from polmp.electrostatics import long_range
from polmp.models import ModelConfig, make_energy_fn
from polmp.models.long_range import graph_long_range, prepare_long_range
from polmp.training.loop import train

SMOKE = os.environ.get("POLMP_SMOKE") == "1"
DATA = pathlib.Path(
    os.environ.get("POLMP_SHARED_DATA", pathlib.Path.cwd().parent / "shared" / "data")
)
CUTOFF = 4.0


# %% [markdown]
# ## Data
#
# The real set: every frame carries `distance` (A), `indexB` (first atom of molecule B)
# and the total charge `chargeA + chargeB` (read by `polmp.data.io.read_frames`).  The
# synthetic set uses the same header keys.


# %%
def synthetic_dimers(distances, seed=0):
    """NH3-like cation (+1) and OH-like anion (-1), rigid, random orientations.

    Labels: E and F of the fixed point charges (Gaussian kernel, sigma 1 A), i.e. a
    pure long-range interaction plus constant intramolecular terms.
    """
    rng = np.random.default_rng(seed)
    cation = np.array(
        [[0, 0, 0], [0.94, 0, -0.33], [-0.47, 0.81, -0.33], [-0.47, -0.81, -0.33]]
    )
    anion = np.array([[0, 0, 0], [0.97, 0, 0]])
    numbers = np.array([7, 1, 1, 1, 8, 1])
    charges = np.array([-0.2, 0.4, 0.4, 0.4, -1.4, 0.4])
    frames = []
    for d in distances:
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pos = np.vstack([cation, anion @ rot.T + [d, 0, 0]])
        energy, grad = jax.value_and_grad(
            lambda r: long_range(r, charges, sigma=1.0).energy
        )(pos)
        frames.append(
            Frame(
                positions=pos,
                numbers=numbers,
                energy=float(energy),
                forces=-np.asarray(grad),
                total_charge=0.0,
                info={"distance": d, "indexB": 4, "label": "CC"},
            )
        )
    return frames


source = DATA / "cacelrfit_lode_dimers"
if (source / "train-id0.xyz").exists():
    train_frames = read_frames(source / "train-id0.xyz")
    test_frames = read_frames(source / "test-id0.xyz")
    # Isolated molecules: drop the 30 A vacuum box.
    train_frames, test_frames = (
        [Frame(**{**f.__dict__, "cell": None, "pbc": np.zeros(3, bool)}) for f in fr]
        for fr in (train_frames, test_frames)
    )
    print("cacelrfit_lode_dimers, dimer id0 (CC)")
else:
    train_frames = synthetic_dimers(np.linspace(3.5, 11.5, 10), seed=0)
    test_frames = synthetic_dimers([12.5, 13.5, 14.5], seed=1)
    print("shared data absent: synthetic cation-anion dimers")
print(
    len(train_frames),
    "train /",
    len(test_frames),
    "test frames;",
    "total charges",
    sorted({f.total_charge for f in train_frames}),
)


# %% [markdown]
# ## Two tiny models, same budget


# %%
def fit(variant, shift="none"):
    model = ModelConfig(
        species=tuple(sorted({int(z) for f in train_frames for z in f.numbers})),
        cutoff_A=CUTOFF,
        l_max=1,
        num_channels=4,
        num_layers=1,
        num_basis=4,
        radial_mlp=(8,),
        readout_hidden=8,
        avg_num_neighbors=4.0,
        variant=variant,
        total_charge_shift=shift,
    )
    config = RunConfig(
        model=model,
        data=DataConfig(max_shapes=1),
        training=TrainingConfig(
            learning_rate=2e-3,
            batch_size=5,
            num_epochs=2 if SMOKE else 300,
            energy_weight=1.0,
            forces_weight=10.0,
            stage2_energy_weight=None if SMOKE else 100.0,
            stage2_start_epoch=None if SMOKE else 200,
            progress_bar=False,
            parity_plots=False,
            checkpoint_every_epochs=1000,
        ),
        output_dir=tempfile.mkdtemp(prefix=f"polmp_nb_{variant}_"),
    )
    # The CI setting skips the test-set evaluation (one compilation less per model).
    result = train(config, datasets=(train_frames, [], [] if SMOKE else test_frames))
    for name, table in result.metrics.items():
        print(
            f"{variant} ({shift}) {name}: E RMSE "
            f"{table['energy_rmse_meV_per_atom']:.1f} meV/atom, F RMSE "
            f"{table['forces_rmse_meV_per_A']:.1f} meV/A"
        )
    return result


runs = {"sr": fit("sr"), "q": fit("q", "uniform")}


# %% [markdown]
# ## Energy and force against separation
#
# Molecule B of the first test frame is moved along the line between the molecules'
# centroids; the plots show E(d) - E(d_max) and the force on molecule B along that
# line, with the reference points of every frame.


# %%
def scan(result, template, distances):
    fns = make_energy_fn(
        result.model_config,
        **(
            {"long_range_fn": graph_long_range}
            if result.model_config.variant != "sr"
            else {}
        ),
    )
    efs = jax.jit(fns.energy_forces_stress_fn)
    b = int(template.info["indexB"])
    ra, rb = template.positions[:b].mean(0), template.positions[b:].mean(0)
    axis = (rb - ra) / np.linalg.norm(rb - ra)
    n = template.num_atoms
    energies, forces = [], []
    for d in distances:
        pos = template.positions.copy()
        pos[b:] += (d - np.linalg.norm(rb - ra)) * axis
        frame = Frame(
            positions=pos, numbers=template.numbers, total_charge=template.total_charge
        )
        graph = frames_to_graph([frame], CUTOFF, num_atoms=n + 1, num_edges=n * (n - 1))
        kw = {}
        if result.model_config.variant != "sr":
            kw["long_range"] = prepare_long_range(
                graph, sigma=1.0, num_free=1, num_periodic=0, atoms_per_graph=n
            )
        e, f, _ = efs(result.params, graph, **kw)
        energies.append(float(e[0]))
        forces.append(float(np.asarray(f)[b:n].sum(0) @ axis))
    return np.array(energies), np.array(forces)


def reference(frames):
    d, e, f = [], [], []
    for fr in frames:
        b = int(fr.info["indexB"])
        axis = fr.positions[b:].mean(0) - fr.positions[:b].mean(0)
        axis /= np.linalg.norm(axis)
        d.append(np.linalg.norm(fr.positions[b:].mean(0) - fr.positions[:b].mean(0)))
        e.append(fr.energy)
        f.append(fr.forces[b:].sum(0) @ axis)
    return np.array(d), np.array(e), np.array(f)


template = test_frames[0]
d_ref, e_ref, f_ref = reference(train_frames + test_frames)
d_min = np.floor(d_ref.min())
distances = np.linspace(d_min, 15.0, 4 if SMOKE else 40)
fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4))
order = np.argsort(d_ref)
ax_e.plot(
    d_ref[order], 1e3 * (e_ref[order] - e_ref[order][-1]), "ko", label="reference"
)
ax_f.plot(d_ref[order], 1e3 * f_ref[order], "ko", label="reference")
for name, result in runs.items():
    e, f = scan(result, template, distances)
    ax_e.plot(distances, 1e3 * (e - e[-1]), label=name)
    ax_f.plot(distances, 1e3 * f, label=name)
for ax in (ax_e, ax_f):
    ax.axvline(2 * CUTOFF, color="grey", ls=":", label="2 x cutoff")
    ax.set_xlabel("centroid separation d (A)")
    ax.legend()
ax_e.set_ylabel("E(d) - E(15 A) (meV)")
ax_f.set_ylabel("force on molecule B along d (meV/A)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Beyond 2 x cutoff the `sr` model sees two isolated molecules: its energy is flat and
# its intermolecular force zero.  The `q` model keeps the Coulomb tail of the ion pair
# (with enough training; the CI setting trains for 2 epochs only).  The full tables,
# with seeds and baselines, are in experiments/README.md ("Charged systems").

"""Collect the variant x total-charge x seed tables of the charged-system experiments.

For every run directory under ROOT (``polmp train`` output: ``config.yaml``, ``best/``,
``metrics.json``) it reads the test set of the run's config, predicts every test frame
with the best EMA parameters and prints Markdown tables:

* per run: test E RMSE (meV/atom) and F RMSE (meV/A), next to the baselines of the same
  test set: zero forces, and per-species reference energies fitted on the training set
  (the composition baseline);
* per group: E RMSE and F RMSE per dimer type (``info["label"]``: CC, CA, ...), per
  NaCl kind (``info["kind"]``) or per carbon-chain charge state;
* NaCl only: the Na9Cl8+ adatom frames binned by the distance of the extra Na from the
  cluster (``info["extra_na_distance_A"]``).

Usage (repository root; ROOT as in experiments/charged_table.sh)::

    python experiments/dimers/collect.py runs/charged/dimers --set dimers \\
        --json runs/charged/dimers/tables.json

Host side, non-periodic frames only (all three sets are clusters/molecules); frames
are padded to one shape so that each model compiles once.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections import defaultdict

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: adatom distance bins of the NaCl table (A)
DISTANCE_BINS = (2.5, 4.0, 6.0, 8.0, 10.5)


def group_of(frame, dataset: str) -> str:
    if dataset == "dimers":
        return str(frame.info.get("label", "?"))
    if dataset == "nacl":
        return str(frame.info.get("kind", "?"))
    return f"Q={frame.total_charge:+.0f}, {frame.num_atoms} atoms"


def composition_baseline(train, test, species) -> np.ndarray:
    """Per-frame energy error (eV) of reference energies fitted on ``train``."""
    from polmp.models.heads import fit_reference_energies

    def counts(frames):
        return np.array([[np.sum(f.numbers == z) for z in species] for f in frames])

    ref = fit_reference_energies(counts(train), [f.energy for f in train])
    return counts(test) @ ref - np.array([f.energy for f in test])


def predict(run_dir: pathlib.Path, frames):
    """(energies (F,) eV, list of forces (n, 3) eV/A) of the run's best model."""
    import jax

    from polmp.data.batching import count_edges, frames_to_graph
    from polmp.models.long_range import prepare_long_range
    from polmp.training.trained import load_trained

    model = load_trained(run_dir)
    cfg = model.model_config
    fns = model.energy_fns
    efs = jax.jit(fns.energy_forces_stress_fn)
    n_max = max(f.num_atoms for f in frames)
    e_max = int(max(count_edges(frames, cfg.cutoff_A)))
    capacity = dict(num_atoms=n_max + 1, num_edges=max(e_max, 1), num_graphs=2)
    options = model.long_range_options
    energies, forces = [], []
    for frame in frames:
        graph = frames_to_graph([frame], cfg.cutoff_A, **capacity)
        kwargs = {}
        if options is not None:
            kwargs["long_range"] = prepare_long_range(
                graph, **options, num_periodic=0, num_free=1, atoms_per_graph=n_max
            )
        e, f, _ = efs(model.params, graph, **kwargs)
        energies.append(float(e[0]))
        forces.append(np.asarray(f[: frame.num_atoms], float))
    return np.array(energies), forces


def rmse(x) -> float:
    x = np.concatenate([np.ravel(v) for v in x]) if isinstance(x, list) else x
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else float("nan")


def collect(root: pathlib.Path, dataset: str) -> dict:
    from polmp.config.loader import load_config
    from polmp.config.schema import RunConfig
    from polmp.training.loop import load_datasets

    runs = sorted(p.parent for p in root.glob("*/metrics.json"))
    if not runs:
        raise SystemExit(f"no finished runs (*/metrics.json) under {root}")
    config = load_config(RunConfig, runs[0] / "config.yaml")
    train, _, test = load_datasets(config.data)
    species = config.model.species
    n_atoms = np.array([f.num_atoms for f in test])
    e_base = composition_baseline(train, test, species)
    f_ref = [f.forces for f in test]
    groups = [group_of(f, dataset) for f in test]
    out = {
        "baselines": {
            "composition_E_rmse_meV_per_atom": 1e3 * rmse(e_base / n_atoms),
            "zero_force_F_rmse_meV_per_A": 1e3 * rmse(f_ref),
            "per_group_zero_force": {
                g: 1e3 * rmse([f_ref[i] for i in range(len(test)) if groups[i] == g])
                for g in sorted(set(groups))
            },
        },
        "runs": {},
    }
    for run in runs:
        energies, forces = predict(run, test)
        de = (energies - np.array([f.energy for f in test])) / n_atoms
        df = [forces[i] - f_ref[i] for i in range(len(test))]
        entry = {
            "E_rmse_meV_per_atom": 1e3 * rmse(de),
            "F_rmse_meV_per_A": 1e3 * rmse(df),
            "groups": {},
        }
        for g in sorted(set(groups)):
            idx = [i for i in range(len(test)) if groups[i] == g]
            entry["groups"][g] = {
                "E_rmse_meV_per_atom": 1e3 * rmse(de[idx]),
                "F_rmse_meV_per_A": 1e3 * rmse([df[i] for i in idx]),
                "frames": len(idx),
            }
        if dataset == "nacl":
            bins = defaultdict(list)
            for i, frame in enumerate(test):
                if frame.info.get("kind") != "adatom":
                    continue
                d = frame.info["extra_na_distance_A"]
                b = int(np.searchsorted(DISTANCE_BINS, d)) - 1
                lo, hi = DISTANCE_BINS[max(b, 0)], DISTANCE_BINS[min(b + 1, 4)]
                bins[f"{lo:.1f}-{hi:.1f} A"].append(i)
            entry["adatom_by_distance"] = {
                k: {
                    "E_rmse_meV_per_atom": 1e3 * rmse(de[v]),
                    "F_rmse_meV_per_A": 1e3 * rmse([df[i] for i in v]),
                    "frames": len(v),
                }
                for k, v in sorted(bins.items())
            }
        out["runs"][run.name] = entry
    return out


def markdown(result: dict) -> str:
    base = result["baselines"]
    lines = [
        f"Baselines (test): composition E "
        f"{base['composition_E_rmse_meV_per_atom']:.2f} meV/atom, zero-force F "
        f"{base['zero_force_F_rmse_meV_per_A']:.1f} meV/A",
        "",
        "| run | test E RMSE (meV/atom) | test F RMSE (meV/A) |",
        "|---|---:|---:|",
    ]
    for name, r in result["runs"].items():
        lines.append(
            f"| `{name}` | {r['E_rmse_meV_per_atom']:.2f} | {r['F_rmse_meV_per_A']:.1f} |"
        )
    groups = list(base["per_group_zero_force"])
    lines += [
        "",
        "Per group, test F RMSE (meV/A) [E RMSE meV/atom]:",
        "",
        "| run | " + " | ".join(groups) + " |",
        "|---|" + "---:|" * len(groups),
        "| zero force | "
        + " | ".join(f"{base['per_group_zero_force'][g]:.1f}" for g in groups)
        + " |",
    ]
    for name, r in result["runs"].items():
        cells = [
            f"{r['groups'][g]['F_rmse_meV_per_A']:.1f} "
            f"[{r['groups'][g]['E_rmse_meV_per_atom']:.1f}]"
            for g in groups
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    first = next(iter(result["runs"].values()))
    if "adatom_by_distance" in first:
        bins = list(first["adatom_by_distance"])
        lines += [
            "",
            "Na9Cl8+ adatom frames by extra-Na distance, F RMSE (meV/A) [E meV/atom]:",
            "",
            "| run | " + " | ".join(bins) + " |",
            "|---|" + "---:|" * len(bins),
        ]
        for name, r in result["runs"].items():
            a = r["adatom_by_distance"]
            cells = [
                f"{a[b]['F_rmse_meV_per_A']:.1f} [{a[b]['E_rmse_meV_per_atom']:.1f}]"
                if b in a
                else "-"
                for b in bins
            ]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=pathlib.Path, help="folder of the run folders")
    parser.add_argument("--set", choices=("dimers", "nacl", "carbon_chain"))
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    result = collect(args.root, args.set)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()

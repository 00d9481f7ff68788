"""Validate a trained polmp model's response observables against reference data.

Three comparisons, none of whose labels the model was trained on (it sees energies,
forces and stress only; docs/method.md#model and #born-charges):

1. Born effective charges Z*_{i,ab} = dP_a/dr_{i,b} (e; vacuum, eps_e = 1, direct form)
   of the 81 water clusters of ``lesfit_spice_bec/water.xyz`` (DFT, SPICE
   wB97M-D3(BJ)/def2-TZVPPD; its ``MACE_*`` keys are model predictions and are not
   read).  A model trained on GFN2-xTB water is compared with DFT here: the comparison
   crosses levels of theory.  Metrics: MAE, RMSE, R^2 of all 9 components of all atoms
   pooled, of the diagonal only, and the RMSE per element.  Also the cluster dipoles
   (e*A).
2. The same metrics, and dipoles, on the GFN2-xTB clusters shipped with polmp
   (``load_water_gfn2("clusters")``: the level of theory of the training data; their
   Born charges and dipoles were held back from training).  When the run trained on
   the shipped set, the clusters whose *structures* were outside its training split
   (its validation and test frames) are also reported on their own.
3. System polarizability alpha_sys = eps_e k_e sum_i alpha_i (A^3, 3x3;
   ``polmp.observables.polarization.system_polarizability``) of periodic 96-atom frames
   of ``kapil_water_bulk_dipole_pol/water_bulk.xyz`` against ``REF_polarizability``
   (A^3, DFPT, Grisafi et al. PRL 2018), evenly strided.  eps_e = eps_inf / (1 + chi)
   per frame (docs/method.md, ``electronic_screening``; eps_inf = 1.78 for water).
   Metrics: Pearson r of all 9 components pooled after removing each component's mean
   over frames (fluctuations), of the isotropic part tr/3 across frames, and of the 9
   components of the anisotropic part alpha - tr/3 I pooled (fluctuations).  Pearson r
   does not depend on a constant eps_e; the mean isotropic values are printed as a
   scale check.  Skipped for variants without alpha (no induced dipoles).

The global sign of all latents is arbitrary (docs/method.md): the sign of the
predicted Z* and dipoles is chosen once per model, as the sign of sum(Z*_pred Z*_ref)
over the GFN2 clusters, and applied to every set (polarizabilities do not depend on it).

Born charges, charges and dipoles come from the code path of ``polmp.ase.Calculator``
(``polmp.ase.make_observables``: autodiff of P through the total latents q + dq,
mu + dmu).  Each structure is padded to a few shared shapes, so the jitted functions
compile once per shape; the number of shapes is printed.

Usage (from the repository root)::

    nice -n 10 python experiments/validation/response.py --model runs/water_gfn2_full \\
        --json runs/water_gfn2_full/response_validation.json

jax and polmp are imported inside the functions that need them, so that importing
this module for its metric helpers (``mae``, ``rmse``, ``r2``, ``pearson``) is cheap.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
LESFIT_WATER = ("lesfit_spice_bec", "water.xyz")
KAPIL_WATER = ("kapil_water_bulk_dipole_pol", "water_bulk.xyz")
#: High-frequency dielectric constant of water (docs/method.md#screening).
EPS_INF_WATER = 1.78
#: A polarizability whose anisotropic part is below this fraction of its largest
#: entry is isotropic (the rest is rounding of tr/3).
ISOTROPIC_TOLERANCE = 1e-10
#: Atom capacities of the padded cluster graphs are multiples of this (few shapes:
#: compiling the Born charges of one shape costs far more than padded evaluations).
CLUSTER_ATOM_MULTIPLE = 64
#: Atom capacities of the padded bulk graphs are multiples of this.
BULK_ATOM_MULTIPLE = 8
#: Edge capacities of the padded graphs are multiples of this.
EDGE_MULTIPLE = 256


# ----------------------------------------------------------------------------- metrics


def mae(predicted, reference) -> float:
    """Mean absolute error of two equally shaped arrays (their unit)."""
    return float(np.mean(np.abs(np.asarray(predicted) - np.asarray(reference))))


def rmse(predicted, reference) -> float:
    """Root-mean-square error of two equally shaped arrays (their unit)."""
    difference = np.asarray(predicted) - np.asarray(reference)
    return float(np.sqrt(np.mean(difference**2)))


def r2(predicted, reference) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot, all entries pooled.

    SS_tot is taken about the mean of ``reference``; a prediction equal to that mean
    everywhere gives 0, a perfect one 1, and a worse one a negative value.  NaN when
    ``reference`` is constant.
    """
    predicted = np.asarray(predicted, np.float64).ravel()
    reference = np.asarray(reference, np.float64).ravel()
    total = np.sum((reference - reference.mean()) ** 2)
    if total == 0.0:
        return math.nan
    return float(1.0 - np.sum((reference - predicted) ** 2) / total)


def pearson(x, y) -> float:
    """Pearson correlation coefficient of two equally shaped arrays, entries pooled.

    NaN when either array is constant (no correlation is defined).
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    dx, dy = x - x.mean(), y - y.mean()
    norm = math.sqrt(float(np.sum(dx**2) * np.sum(dy**2)))
    if norm == 0.0:
        return math.nan
    return float(np.sum(dx * dy) / norm)


def error_metrics(predicted, reference) -> dict:
    """{"mae", "rmse", "r2"} of two equally shaped arrays, entries pooled."""
    return {
        "mae": mae(predicted, reference),
        "rmse": rmse(predicted, reference),
        "r2": r2(predicted, reference),
    }


def bec_metrics(predicted, reference, numbers) -> dict:
    """Born-charge errors of a set of structures (e).

    Args:
        predicted, reference: lists of (N_f, 3, 3) Born charges per structure, e.
        numbers: list of (N_f,) atomic numbers.

    Returns:
        {"num_frames", "num_atoms", "all": error_metrics of the 9 components of all
        atoms, "diagonal": error_metrics of Z*_aa, "rmse_by_element": {symbol: RMSE
        of the 9 components of that element's atoms}}.
    """
    from ase.data import chemical_symbols

    num_frames = len(predicted)
    predicted = np.concatenate(predicted)
    reference = np.concatenate(reference)
    numbers = np.concatenate(numbers)
    diagonal = np.arange(3)
    return {
        "num_frames": num_frames,
        "num_atoms": int(numbers.size),
        "all": error_metrics(predicted, reference),
        "diagonal": error_metrics(
            predicted[:, diagonal, diagonal], reference[:, diagonal, diagonal]
        ),
        "rmse_by_element": {
            chemical_symbols[z]: rmse(predicted[numbers == z], reference[numbers == z])
            for z in np.unique(numbers).tolist()
        },
    }


def polarizability_metrics(predicted, reference) -> dict:
    """Correlation of predicted and reference system polarizabilities across frames.

    Args:
        predicted, reference: (F, 3, 3) polarizabilities, A^3.

    Returns:
        {"num_frames", "r_components": Pearson r of the 9 components pooled, each
        with its mean over frames removed; "r_isotropic": r of tr/3 across frames;
        "r_anisotropic": r of the 9 components of alpha - tr/3 I pooled, means
        removed (NaN when the prediction is isotropic: its anisotropic part is
        rounding noise, below ``ISOTROPIC_TOLERANCE`` of its largest entry);
        "mean_isotropic_predicted" and "mean_isotropic_reference": mean tr/3, A^3}.
    """
    predicted = np.asarray(predicted, np.float64)
    reference = np.asarray(reference, np.float64)

    def fluctuations(alpha):
        return alpha - alpha.mean(axis=0)

    def isotropic(alpha):
        return np.trace(alpha, axis1=1, axis2=2) / 3.0

    def anisotropic(alpha):
        return alpha - isotropic(alpha)[:, None, None] * np.eye(3)

    predicted_anisotropy = anisotropic(predicted)
    scale = np.abs(predicted).max(initial=0.0)
    is_isotropic = (
        np.abs(predicted_anisotropy).max(initial=0.0) <= ISOTROPIC_TOLERANCE * scale
    )
    return {
        "num_frames": int(predicted.shape[0]),
        "r_components": pearson(fluctuations(predicted), fluctuations(reference)),
        "r_isotropic": pearson(isotropic(predicted), isotropic(reference)),
        "r_anisotropic": math.nan
        if is_isotropic
        else pearson(
            fluctuations(predicted_anisotropy), fluctuations(anisotropic(reference))
        ),
        "mean_isotropic_predicted": float(isotropic(predicted).mean()),
        "mean_isotropic_reference": float(isotropic(reference).mean()),
    }


# ------------------------------------------------------------------------ evaluation


def strided_indices(count: int, max_frames: int | None) -> np.ndarray:
    """Indices of at most ``max_frames`` of ``count`` frames, spread evenly (all when
    ``max_frames`` is None or not smaller than ``count``)."""
    if max_frames is None or max_frames >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, max_frames).round().astype(int)


def padded_capacities(frames, cutoff: float, atom_multiple: int) -> list[tuple]:
    """(num_atoms, num_edges) capacity of each frame's single-structure graph.

    Atoms are padded to multiples of ``atom_multiple`` (at least one padding atom);
    the edge capacity is the largest edge count of the frames that share that atom
    capacity, rounded up to a multiple of ``EDGE_MULTIPLE``, so frames of one atom
    capacity share one compiled shape.
    """
    from polmp.data.batching import count_edges

    atoms = [
        atom_multiple * math.ceil((f.num_atoms + 1) / atom_multiple) for f in frames
    ]
    edges = count_edges(frames, cutoff)
    edge_capacity = {
        capacity: EDGE_MULTIPLE
        * math.ceil(max(edges[[a == capacity for a in atoms]]) / EDGE_MULTIPLE)
        for capacity in set(atoms)
    }
    return [(capacity, edge_capacity[capacity]) for capacity in atoms]


def padded_inputs(model, frame, capacity, dtype):
    """(graph, long-range data or None) of one frame, as ``polmp.ase.Calculator``.

    Args:
        model: ``TrainedModel``.
        frame: ``Frame``.
        capacity: (num_atoms, num_edges) of the padded graph.
        dtype: floating dtype of the graph.
    """
    import jax

    from polmp.data.batching import frames_to_graph
    from polmp.models.long_range import prepare_long_range

    num_atoms, num_edges = capacity
    graph = frames_to_graph(
        [frame], model.config.model.cutoff_A, num_atoms=num_atoms, num_edges=num_edges
    )
    graph = jax.tree.map(
        lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x, graph
    )
    options = model.long_range_options
    if options is None:
        return graph, None
    return graph, prepare_long_range(graph, **options, atoms_per_graph=num_atoms)


def shape_key(tree) -> tuple:
    """Tree structure (with static fields) and leaf shapes/dtypes: one jit compile."""
    import jax

    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef), tuple((np.shape(x), str(x.dtype)) for x in leaves)


def cluster_observables(model, frames, dtype, shapes: set) -> tuple[list, np.ndarray]:
    """Born charges and dipoles of non-periodic frames in vacuum (eps_e = 1).

    Args:
        model: ``TrainedModel`` (parameters in ``dtype``).
        frames: non-periodic ``Frame``s.
        dtype: compute dtype.
        shapes: set of compiled shape keys, updated in place (host bookkeeping).

    Returns:
        (list of (N_f, 3, 3) Born charges Z*_{i,ab} = dP_a/dr_{i,b}, e;
        (F, 3) dipoles P, e*A), in the model's own latent sign.
    """
    from polmp.ase import make_observables

    observables = make_observables(model.energy_fns.outputs_fn, 1.0)
    capacities = padded_capacities(
        frames, model.config.model.cutoff_A, CLUSTER_ATOM_MULTIPLE
    )
    born, dipoles = [], []
    for frame, capacity in zip(frames, capacities, strict=True):
        graph, data = padded_inputs(model, frame, capacity, dtype)
        shapes.add(("clusters", shape_key((graph, data))))
        _, dipole, bec = observables(model.params, graph, data, False)
        born.append(np.asarray(bec[: frame.num_atoms], np.float64))
        dipoles.append(np.asarray(dipole, np.float64))
    return born, np.stack(dipoles)


def bulk_polarizabilities(model, frames, dtype, eps_inf: float, shapes: set):
    """System polarizabilities alpha_sys (F, 3, 3), A^3, of periodic frames.

    alpha_sys = eps_e k_e sum_i alpha_i with eps_e = eps_inf / (1 + chi) of each frame
    (``electronic_screening`` with the frame's alpha_i and volume).

    Args:
        model: ``TrainedModel`` of a variant with alpha (parameters in ``dtype``).
        frames: periodic ``Frame``s.
        dtype: compute dtype.
        eps_inf: high-frequency dielectric constant of the material.
        shapes: set of compiled shape keys, updated in place.

    Returns:
        ((F, 3, 3) alpha_sys, A^3; (F,) eps_e).
    """
    import jax

    from polmp.observables.polarization import (
        electronic_screening,
        system_polarizability,
    )

    outputs_fn = model.energy_fns.outputs_fn
    per_atom_alpha = jax.jit(
        lambda params, graph, data: outputs_fn(params, graph, long_range=data).alpha
    )
    capacities = padded_capacities(
        frames, model.config.model.cutoff_A, BULK_ATOM_MULTIPLE
    )
    alphas, screening = [], []
    for frame, capacity in zip(frames, capacities, strict=True):
        graph, data = padded_inputs(model, frame, capacity, dtype)
        shapes.add(("bulk", shape_key((graph, data))))
        alpha = np.asarray(per_atom_alpha(model.params, graph, data), np.float64)
        alpha = alpha[: frame.num_atoms]
        volume = abs(float(np.linalg.det(frame.cell)))
        eps_e = float(electronic_screening(eps_inf, alpha, volume))
        alphas.append(np.asarray(system_polarizability(alpha, eps_e), np.float64))
        screening.append(eps_e)
    return np.stack(alphas), np.asarray(screening)


def latent_sign(predicted, reference) -> float:
    """+1 or -1: the sign of sum(Z*_pred Z*_ref) (+1 when it is 0).

    Args:
        predicted, reference: lists of (N_f, 3, 3) Born charges, e.
    """
    overlap = sum(
        float(np.sum(p * r)) for p, r in zip(predicted, reference, strict=True)
    )
    return -1.0 if overlap < 0.0 else 1.0


def clusters_outside_training(config, num_clusters: int) -> np.ndarray | None:
    """Which shipped GFN2 clusters were *not* in the run's training split.

    Replays the run's split (``polmp.training.pipeline.split_frames`` over the frames
    of ``config.data.train_path``) when that path is a shipped set holding the
    clusters, read whole (``index ":"``).

    Args:
        config: the run's ``RunConfig``.
        num_clusters: number of shipped clusters (all of them).

    Returns:
        Bool array (num_clusters,) (True: validation or test structure), or None when
        the run did not train on a shipped set with the clusters.
    """
    from polmp.data.embedded import EMBEDDED_PREFIX, EMBEDDED_SETS, load_water_gfn2
    from polmp.training.pipeline import split_frames

    data = config.data
    name = (data.train_path or "").removeprefix(EMBEDDED_PREFIX)
    kinds = EMBEDDED_SETS.get(name, ())
    if not str(data.train_path).startswith(EMBEDDED_PREFIX) or "clusters" not in kinds:
        return None
    if data.index != ":":
        return None
    before = kinds[: kinds.index("clusters")]
    offset = sum(len(load_water_gfn2(kind)) for kind in before)
    after = kinds[kinds.index("clusters") + 1 :]
    total = offset + num_clusters + sum(len(load_water_gfn2(kind)) for kind in after)
    train, _, _ = split_frames(
        range(total),
        0.0 if data.valid_path else data.valid_fraction,
        0.0 if data.test_path else data.test_fraction,
        data.split_seed,
    )
    return ~np.isin(offset + np.arange(num_clusters), train)


def validate(args) -> dict:
    """Run the three comparisons (module docstring) and return their numbers."""
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    from polmp.data.embedded import load_water_gfn2
    from polmp.data.io import read_frames
    from polmp.training.trained import load_trained

    start = time.perf_counter()
    dtype = np.dtype(args.dtype)
    model = load_trained(args.model).cast(dtype)
    data_root = pathlib.Path(args.data_root)
    shapes: set = set()
    results = {
        "model": str(args.model),
        "variant": model.config.model.variant,
        "dtype": args.dtype,
    }

    gfn2_all = load_water_gfn2("clusters")
    gfn2_picks = strided_indices(len(gfn2_all), args.max_clusters)
    gfn2 = [gfn2_all[k] for k in gfn2_picks]
    lesfit_all = read_frames(
        data_root.joinpath(*LESFIT_WATER), require=("bec", "dipole")
    )
    lesfit = [
        lesfit_all[k] for k in strided_indices(len(lesfit_all), args.max_clusters)
    ]

    # one pass over both sets, so that they share the padded shapes
    born, dipoles = cluster_observables(model, gfn2 + lesfit, dtype, shapes)
    gfn2_bec, lesfit_bec = born[: len(gfn2)], born[len(gfn2) :]
    gfn2_dipoles, lesfit_dipoles = dipoles[: len(gfn2)], dipoles[len(gfn2) :]
    sign = latent_sign(gfn2_bec, [f.bec for f in gfn2])
    results["latent_sign"] = sign

    def cluster_set(frames, born, dipoles):
        metrics = bec_metrics(
            [sign * z for z in born],
            [f.bec for f in frames],
            [np.asarray(f.numbers) for f in frames],
        )
        metrics["dipole"] = error_metrics(
            sign * dipoles, np.stack([f.dipole for f in frames])
        )
        return metrics

    results["clusters"] = {
        "lesfit_water_dft": cluster_set(lesfit, lesfit_bec, lesfit_dipoles),
        "gfn2": cluster_set(gfn2, gfn2_bec, gfn2_dipoles),
    }
    outside = clusters_outside_training(model.config, len(gfn2_all))
    if outside is not None and outside[gfn2_picks].any():
        held = np.flatnonzero(outside[gfn2_picks])
        results["clusters"]["gfn2_untrained_structures"] = cluster_set(
            [gfn2[k] for k in held], [gfn2_bec[k] for k in held], gfn2_dipoles[held]
        )
    clusters_done = time.perf_counter()

    if model.config.model.use_alpha:
        kapil_all = read_frames(
            data_root.joinpath(*KAPIL_WATER), require=("polarizability",)
        )
        kapil = [kapil_all[k] for k in strided_indices(len(kapil_all), args.max_frames)]
        predicted, eps_e = bulk_polarizabilities(
            model, kapil, dtype, args.eps_inf, shapes
        )
        metrics = polarizability_metrics(
            predicted, np.stack([f.polarizability for f in kapil])
        )
        metrics.update(eps_inf=args.eps_inf, mean_eps_e=float(eps_e.mean()))
        results["polarizability"] = metrics
    else:
        results["polarizability"] = {
            "skipped": f"variant {model.config.model.variant!r} has no alpha_i "
            "(no induced dipoles)"
        }
    end = time.perf_counter()
    results["num_compiled_shapes"] = len(shapes)
    results["runtime_s"] = {
        "clusters": clusters_done - start,
        "polarizability": end - clusters_done,
        "total": end - start,
    }
    return results


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def format_table(results: dict) -> str:
    """The numbers of ``validate`` as a plain-text table."""
    names = {
        "lesfit_water_dft": "lesfit water, DFT (cross-level)",
        "gfn2": "GFN2 clusters (training level)",
        "gfn2_untrained_structures": "  structures outside train split",
    }
    lines = [
        f"model {results['model']} (variant {results['variant']}, {results['dtype']}),"
        f" latent sign {results['latent_sign']:+.0f} (chosen on the GFN2 clusters)",
        "",
        "Born effective charges Z* (e), vacuum (eps_e = 1): 9 components of all atoms"
        " | diagonal | RMSE per element",
    ]
    width = max(len(name) for name in names.values())
    elements = sorted(
        {e for m in results["clusters"].values() for e in m["rmse_by_element"]}
    )
    lines.append(
        f"{'set':<{width}} frames atoms    MAE   RMSE     R2 |    MAE   RMSE     R2 | "
        + " ".join(f"{e:>6}" for e in elements)
    )
    for key, m in results["clusters"].items():
        row = [
            f"{names[key]:<{width}} {m['num_frames']:>6} {m['num_atoms']:>5}",
            *(f"{_number(m['all'][k]):>6}" for k in ("mae", "rmse", "r2")),
            "|",
            *(f"{_number(m['diagonal'][k]):>6}" for k in ("mae", "rmse", "r2")),
            "|",
            *(f"{_number(m['rmse_by_element'].get(e)):>6}" for e in elements),
        ]
        lines.append(" ".join(row))
    lines += ["", "Cluster dipoles P (e*A), components pooled"]
    lines.append(f"{'set':<{width}} frames    MAE   RMSE     R2")
    for key, m in results["clusters"].items():
        d = m["dipole"]
        lines.append(
            f"{names[key]:<{width}} {m['num_frames']:>6} "
            + " ".join(f"{_number(d[k]):>6}" for k in ("mae", "rmse", "r2"))
        )
    p = results["polarizability"]
    lines += ["", "System polarizability alpha_sys (A^3) vs kapil REF_polarizability"]
    if "skipped" in p:
        lines.append(f"skipped: {p['skipped']}")
    else:
        lines.append(
            f"{p['num_frames']} bulk frames, eps_inf {p['eps_inf']}, mean eps_e "
            f"{p['mean_eps_e']:.3f}; Pearson r across frames (means removed)"
        )
        lines.append(
            "r(9 components)  r(isotropic)  r(anisotropic)  <tr/3> pred  <tr/3> ref"
        )
        lines.append(
            f"{_number(p['r_components']):>15}  {_number(p['r_isotropic']):>12}  "
            f"{_number(p['r_anisotropic']):>14}  "
            f"{_number(p['mean_isotropic_predicted'], 2):>11}  "
            f"{_number(p['mean_isotropic_reference'], 2):>10}"
        )
        if math.isnan(p["r_anisotropic"]):
            lines.append("r(anisotropic) n/a: the predicted alpha_sys is isotropic")
    t = results["runtime_s"]
    lines += [
        "",
        f"{results['num_compiled_shapes']} compiled shapes; runtime {t['total']:.1f} s "
        f"(clusters {t['clusters']:.1f} s, polarizability {t['polarizability']:.1f} s)",
    ]
    return "\n".join(lines)


def _json_ready(value):
    """``value`` with NaN floats replaced by None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="run directory, checkpoint step directory, exported model or shipped name",
    )
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_DATA_ROOT),
        help="folder of the reference data (default: ../shared/data of the repository)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=100,
        help="bulk frames for the polarizability, evenly strided (default 100 of 1000)",
    )
    parser.add_argument(
        "--max-clusters",
        type=int,
        default=None,
        help="clusters per cluster set, evenly strided (default: all)",
    )
    parser.add_argument(
        "--eps-inf",
        type=float,
        default=EPS_INF_WATER,
        help="eps_inf of the bulk material (default: water, 1.78)",
    )
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args(argv)
    results = validate(args)
    print(format_table(results))
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_json_ready(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

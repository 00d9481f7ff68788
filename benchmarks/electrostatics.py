"""Long-range electrostatics benchmark: polmp PME (and Ewald / long_range when present)
against jax-pme's PME and P3M, energy + forces, in one run.

Usage::

    python benchmarks/electrostatics.py            # N = 192, 1536, 5184, 12288
    python benchmarks/electrostatics.py --quick    # N = 192, 1536

System: the 192-atom RPBE-D3 water frame (``lesfit_water_rpbe_d3/test-H2O_RPBE-D3.xyz``,
first frame) replicated 1^3 .. 4^3, charges O -0.8 e, H +0.4 e and, for the multipole
rows, random small dipoles (0.05 e A) and traceless quadrupoles (0.05 e A^2), seeded.

Each configuration is prepared on the host and jits ``value_and_grad`` with respect to
the positions.  Peak memory: every configuration runs once in its own subprocess (so
``ru_maxrss`` is that configuration's peak resident memory, including the ~300 MB of
the Python + jax runtime).  Time: all configurations of one (N, dtype) are compiled in
one subprocess and then called round-robin (9 rounds, 5 from N = 5184 on), so that the
load of other jobs on the machine hits all rows alike; the median per row is reported.
Rows:

* ``polmp pme q``: ``pme_energy`` charges only, sigma 1 A, accuracy 1e-5, order 6,
  mesh for charges (``max_multipole_order=0``).
* ``polmp pme q+mu+Th``: q, mu, Theta plus the one-shot kappa/alpha response through
  ``polmp.electrostatics.api.prepare_pme_solver(...).long_range_fn`` (plain
  ``pme_energy(q, mu, Th)`` when the api module is absent), on the same mesh as the
  charge row (``max_multipole_order=0``: the multipole terms are then less accurate than
  ``accuracy`` relative to their own size, see the err column of the next row).
* ``polmp pme q+mu+Th 1pass``: the same E_lr, written with
  ``pme_energy_potential_field`` (E, phi and field from one spread and one FFT pair) and
  ``polmp.electrostatics.response.one_shot_response``.
* ``polmp pme q+mu+Th p8 l2``: the same with order 8 and the mesh rule for quadrupoles
  (``max_multipole_order=2``), i.e. ``accuracy`` for every term.
* ``polmp ewald q``: ``polmp.electrostatics.api.prepare_ewald(...).energy_fn``
  (reciprocal Ewald sum, charges only), if present.
* ``jax-pme P3M`` / ``jax-pme PME``: point charges, cutoff 6 A, smearing 1.5 A, mesh
  spacing 1.0 A, 4 interpolation nodes, real-space part included (the neighbour list is
  built on the host, outside the timing).

The ``ratio`` column divides each time by the jax-pme P3M time of the same N and dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = pathlib.Path(
    os.environ.get("POLMP_SHARED_DATA", REPO.parent / "shared" / "data")
)
WATER = SHARED_DATA / "lesfit_water_rpbe_d3" / "test-H2O_RPBE-D3.xyz"

SIGMA = 1.0
ACCURACY = 1e-5
ORDER = 6
from polmp.units import EPSILON0  # noqa: E402  (plain float, no jax import)

METHODS = [
    "polmp pme q",
    "polmp pme q+mu+Th",
    "polmp pme q+mu+Th 1pass",
    "polmp pme q+mu+Th p8 l2",
    "polmp ewald q",
    "jax-pme P3M",
    "jax-pme PME",
]


def build_system(rep, seed=0):
    """Replicated water: positions (N,3), cell (3,3), q, mu, theta as numpy float64."""
    import ase.io
    import numpy as np

    atoms = ase.io.read(WATER, index=0)
    atoms = atoms.repeat((rep, rep, rep))
    positions = atoms.get_positions()
    cell = np.asarray(atoms.get_cell().array)
    symbols = np.array(atoms.get_chemical_symbols())
    q = np.where(symbols == "O", -0.8, 0.4)
    rng = np.random.default_rng(seed)
    n = len(q)
    mu = 0.05 * rng.normal(size=(n, 3))
    theta = 0.05 * rng.normal(size=(n, 3, 3))
    theta = theta + theta.transpose(0, 2, 1)
    theta -= np.trace(theta, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3.0
    return atoms, positions, cell, q, mu, theta


def _time(fn, args, repeats):
    import jax
    import numpy as np

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), compile_s


def _build(method, rep, dtype_name):
    """Jitted energy+forces function, its arguments and an info dict (host setup)."""
    import resource

    import jax

    if dtype_name == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    dtype = jnp.float64 if dtype_name == "float64" else jnp.float32
    atoms, positions, cell, q, mu, theta = build_system(rep)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    info = {}

    def cast(x):
        return jnp.asarray(x, dtype)

    if method == "reference":
        # float64 energies on a much finer mesh (order 8) for the error column
        from polmp.electrostatics.pme import pme_energy, prepare_pme

        out = {}
        spec = prepare_pme(
            cell, sigma=SIGMA, accuracy=1e-9, order=8, max_multipole_order=0
        )
        out["q"] = float(
            pme_energy(
                cast(positions), cast(cell), cast(q), None, None, spec, sigma=SIGMA
            )
        )
        if len(q) <= 5184:
            spec = prepare_pme(
                cell, sigma=SIGMA, accuracy=1e-7, order=8, max_multipole_order=2
            )
            out["full"] = float(
                pme_energy(
                    *(cast(x) for x in (positions, cell, q, mu, theta)),
                    spec,
                    sigma=SIGMA,
                )
            )
        out["self_q"] = float(
            np.sum(q**2) / SIGMA / (2 * EPSILON0 * (2 * np.pi) ** 1.5)
        )
        out["self_full"] = out["self_q"] + float(
            (np.sum(mu**2) / (3 * SIGMA**3) + np.sum(theta**2) / (10 * SIGMA**5))
            / (2 * EPSILON0 * (2 * np.pi) ** 1.5)
        )
        return None, None, out

    if method.startswith("polmp pme"):
        from polmp.electrostatics.pme import pme_energy, prepare_pme

        full = "mu" in method
        order = 8 if "p8" in method else ORDER
        lmax = 2 if "l2" in method else 0
        spec = prepare_pme(
            cell, sigma=SIGMA, accuracy=ACCURACY, order=order, max_multipole_order=lmax
        )
        info["mesh"] = "x".join(map(str, spec.mesh_shape))
        try:
            from polmp.electrostatics import api  # EWALD's public entry point
        except ImportError:
            api = None
        if "1pass" in method:
            # the same E_lr with pme_energy_potential_field (one spread/FFT pair for E,
            # phi and field) and EWALD's response formula
            from polmp.electrostatics import multipoles, response
            from polmp.electrostatics.pme import pme_energy_potential_field

            rng = np.random.default_rng(1)
            kappa = cast(0.01 * rng.uniform(size=len(q)))
            alpha = cast(0.01 * rng.uniform(size=len(q)))
            info["variant"] = (
                f"pme_energy_potential_field + response (p={order}, l={lmax})"
            )

            def energy(r, c, q_, mu_, th_):
                e, phi, field = pme_energy_potential_field(
                    r, c, q_, mu_, th_, spec, sigma=SIGMA
                )
                e = e - multipoles.self_energy(q_, mu_, th_, sigma=SIGMA)
                phi_s, field_s = multipoles.self_potential_field(
                    q_, mu_, th_, sigma=SIGMA
                )
                res = response.one_shot_response(
                    phi - phi_s, field - field_s, kappa, alpha
                )
                return e + res.u_q + res.u_mu
        elif full and api is not None and hasattr(api, "prepare_pme_solver"):
            rng = np.random.default_rng(1)
            kappa = cast(0.01 * rng.uniform(size=len(q)))
            alpha = cast(0.01 * rng.uniform(size=len(q)))
            solver = api.prepare_pme_solver(
                cell,
                sigma=SIGMA,
                accuracy=ACCURACY,
                order=order,
                max_multipole_order=lmax,
            )
            assert solver.spec == spec
            info["variant"] = (
                f"api pme solver q,mu,Th,kappa,alpha (p={order}, l={lmax} mesh)"
            )

            def energy(r, c, q_, mu_, th_):
                return solver.long_range_fn(r, c, q_, mu_, th_, kappa, alpha).energy
        else:
            info["variant"] = (
                f"pme_energy(q,mu,Th) (p={order}, l={lmax} mesh)"
                if full
                else "pme_energy(q)"
            )

            def energy(r, c, q_, mu_, th_):
                return pme_energy(
                    r,
                    c,
                    q_,
                    mu_ if full else None,
                    th_ if full else None,
                    spec,
                    sigma=SIGMA,
                )

        fn = jax.jit(jax.value_and_grad(energy))
        args = (cast(positions), cast(cell), cast(q), cast(mu), cast(theta))
        # bare reciprocal energy of the same spec and terms, for the error column
        info["energy_bare"] = float(
            pme_energy(
                *args[:3],
                args[3] if full else None,
                args[4] if full else None,
                spec,
                sigma=SIGMA,
            )
        )
    elif method == "polmp ewald q":
        if len(q) > 5184:
            return (
                None,
                None,
                {"skip": "skipped above N = 5184 (O(N M): ~1 min per call)"},
            )
        try:
            from polmp.electrostatics import api
        except ImportError:
            return None, None, {"skip": "polmp.electrostatics.api not available"}
        solver = api.prepare_ewald(
            cell, sigma=SIGMA, accuracy=ACCURACY, max_multipole_order=0
        )
        info["mesh"] = f"{len(solver.spec.indices)} k"

        def energy(r, c, q_):
            return solver.energy_fn(r, c, q_)

        fn = jax.jit(jax.value_and_grad(energy))
        args = (cast(positions), cast(cell), cast(q))
    else:
        import jaxpme

        calc = (jaxpme.P3M if "P3M" in method else jaxpme.PME)(
            interpolation_nodes=4, prefactor=jaxpme.prefactors.eV_A
        )
        inputs = calc.prepare(atoms, q, 6.0, 1.0, 1.5)
        charges, cell_, pos_, i, j, shifts, k_grid, smearing = inputs
        info["mesh"] = "x".join(map(str, k_grid.shape))
        info["pairs"] = int(len(i))

        def energy(r, c, q_):
            return calc.energy(
                q_,
                c,
                r,
                jnp.asarray(i),
                jnp.asarray(j),
                jnp.asarray(shifts),
                k_grid,
                smearing,
            )

        fn = jax.jit(jax.value_and_grad(energy))
        args = (cast(pos_), cast(cell_), cast(charges))

    info["base_mb"] = base_rss
    return fn, args, info


def run_one(method, rep, dtype_name):
    """Memory run of one configuration (own process): compile, call, peak RSS."""
    import resource

    fn, args, info = _build(method, rep, dtype_name)
    if fn is None:
        return info
    _, compile_s = _time(fn, args, 1)
    info["energy"] = float(fn(*args)[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    info.update(compile_s=compile_s, peak_mb=peak)
    return info


def run_group(methods, rep, dtype_name, repeats):
    """Timing run: all methods in one process, calls interleaved round-robin so that a
    change of load from other jobs hits every method alike; median per method, ms."""
    import jax
    import numpy as np

    fns = {}
    for method in methods:
        try:
            fn, args, _ = _build(method, rep, dtype_name)
        except Exception:  # reported by the memory run
            fn = None
        if fn is not None:
            jax.block_until_ready(fn(*args))  # compile
            fns[method] = (fn, args)
    times = {m: [] for m in fns}
    for _ in range(repeats):
        for method, (fn, args) in fns.items():
            if len(times[method]) >= 3 and np.median(times[method]) > 2.0:
                continue  # slow rows: three calls are enough
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[method].append(time.perf_counter() - t0)
    return {m: 1e3 * float(np.median(t)) for m, t in times.items()}


def _subprocess(*argv):
    cmd = [sys.executable, __file__, *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[-1][7:]) if line else {"error": proc.stderr.strip()[-200:]}


def _error(method, r, reference):
    """|E - E_ref| / E_self for polmp rows (the scale ``accuracy`` refers to)."""
    key = "full" if "mu" in method else "q"
    if not method.startswith("polmp") or key not in reference or "energy" not in r:
        return "-"
    energy = r.get("energy_bare", r["energy"])
    if method.startswith("polmp ewald"):
        energy = energy + reference["self_" + key]  # E_elec -> bare reciprocal sum
    return f"{abs(energy - reference[key]) / reference['self_' + key]:.1e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 192 and 1536 only")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--_one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--_group", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one or args._group:
        try:
            if args._one:
                method, rep, dtype_name = args._one
                out = run_one(method, int(rep), dtype_name)
            else:
                methods, rep, dtype_name, repeats = args._group
                out = run_group(methods.split(","), int(rep), dtype_name, int(repeats))
        except Exception as exc:  # report and continue with the other rows
            out = {"error": f"{type(exc).__name__}: {exc}"[:200]}
        print("RESULT " + json.dumps(out))
        return

    reps = [1, 2] if args.quick else [1, 2, 3, 4]
    dtypes = args.dtypes.split(",")
    methods = args.methods.split(",")
    machine = platform.processor() or platform.machine()
    print(f"# machine: {machine}, nproc={os.cpu_count()}")
    print(
        f"# polmp PME sigma={SIGMA} accuracy={ACCURACY} order={ORDER}; "
        "jax-pme cutoff 6, smearing 1.5, mesh spacing 1.0, 4 nodes; "
        "energy+forces, median, jit"
    )
    cols = ("N", "dtype", "method", "mesh", "time ms", "ratio", "peak MB", "compile s")
    header = _row(*cols, "err/Eself", "note")
    print(header)
    print("-" * len(header))
    for rep in reps:
        n = 192 * rep**3
        repeats = 9 if n <= 1536 else 5
        for dtype_name in dtypes:
            if dtype_name == dtypes[0]:
                reference = _subprocess("--_one", "reference", rep, "float64")
            results = {}
            for method in methods:
                results[method] = _subprocess("--_one", method, rep, dtype_name)
            timing = _subprocess(
                "--_group", ",".join(methods), rep, dtype_name, repeats
            )
            for method in methods:
                if method in timing and "error" not in results[method]:
                    results[method]["time_ms"] = timing[method]
            ref = results.get("jax-pme P3M", {}).get("time_ms")
            for method in methods:
                r = results[method]
                if "time_ms" not in r:
                    note = r.get("skip") or r.get("error")
                    print(
                        _row(n, dtype_name, method, "", "-", "-", "-", "-", "-", note)
                    )
                    continue
                ratio = f"{r['time_ms'] / ref:.2f}" if ref else "-"
                print(
                    _row(
                        n,
                        dtype_name,
                        method,
                        r.get("mesh", ""),
                        f"{r['time_ms']:.1f}",
                        ratio,
                        f"{r['peak_mb']:.0f}",
                        f"{r['compile_s']:.1f}",
                        _error(method, r, reference),
                        r.get("variant", ""),
                    ),
                    flush=True,
                )


def _row(n, dtype, method, mesh, time_ms, ratio, peak, compile_s, err, note):
    return (
        f"{n:>6} {dtype:>7} {method:<24} {mesh:>11} {time_ms:>8} {ratio:>6} {peak:>8} "
        f"{compile_s:>9} {err:>9}  {note}"
    )


if __name__ == "__main__":
    main()

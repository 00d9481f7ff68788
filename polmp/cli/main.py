"""Command-line entry point: ``polmp <verb> [options]``.

The CLI holds no physics: it parses options, sets jax precision (x64, matmul
precision) *before* anything is built, and calls library functions.

Verbs:
    demo      the main job on the embedded default: load the shipped water model
              (GFN2-xTB water, variant "full"), run NVT MD of a 32-molecule box with
              Pdot and alpha_sys recorded in the scan, and write IR and Raman spectra
              (arrays, peak table, plots over the experimental IR) into ./polmp-demo.
    electrostatics
              a 64-molecule water box with fixed point-charge-like latents: long-range
              energy, forces and timings from every electrostatics method (Ewald, PME,
              the reference implementation's truncated k-set) and the cluster limit.
    train     polmp train CONFIG.yaml [dotted.key=value ...] [--resume | --overwrite]
    sweep     polmp sweep CONFIG.yaml --grid key=[a,b] [--grid ...] [key=value ...]
    evaluate  polmp evaluate RUN_DIR_OR_CHECKPOINT_OR_MODEL DATA [--format FMT]
              [--output DIR]   (DATA: file, glob or embedded:<set>; parity plots in DIR)
    md        polmp md [CONFIG.yaml] [dotted.key=value ...] [--overwrite]
              (schema: MDConfig; the YAML may be omitted: defaults plus overrides)
    spectra   polmp spectra MD_DIR [--experimental FILE]

Errors (bad config, missing file, a run directory in use ...) print one line on stderr
and exit with status 1; ``--debug`` (anywhere on the line) prints the traceback.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import warnings


def _set_precision(precision: str) -> None:
    """Set jax's global dtype switches; must run before any jax array is created."""
    import jax

    jax.config.update("jax_enable_x64", precision == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")
    if precision == "float32":
        quiet_float64_requests()


def quiet_float64_requests() -> None:
    """Silence jax's notice that a float64 request becomes float32 without x64.

    jax-md's integrators sum the kinetic energy with ``util.high_precision_sum``, which
    asks for float64 whatever the input; with x64 off (a float32 run) jax truncates
    the request to float32, which is what a float32 run wants, and warns once per run.
    Only that notice is filtered; every other warning is shown.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"Explicitly requested dtype float64 requested in "
        r"(sum|convert_element_type|asarray|array) is not available",
        category=UserWarning,
    )


def _timed(fn, *args, repeats=3):
    """Run ``fn`` once to compile, then return (result, best wall time in ms)."""
    import jax

    result = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return result, best * 1e3


def run_demo(args: argparse.Namespace) -> int:
    """Shipped model -> water MD with observables -> IR/Raman spectra and plots."""
    _set_precision(args.precision)
    from polmp.config.schema import MDConfig
    from polmp.md.simulate import run_md
    from polmp.observables.report import write_spectra

    steps = args.steps
    config = MDConfig(
        model=args.model,
        structure="embedded:water-gfn2-bulk",
        frame_index=0,
        ensemble="nvt_nose_hoover",
        temperature_K=300.0,
        timestep_fs=0.5,
        equilibration_steps=args.equilibration,
        num_steps=steps,
        chunk_steps=100,
        record_every=4,
        trajectory_every=100,
        thermostat_time_fs=50.0,
        skin_A=0.3,  # the 9.67 A box allows cutoff + skin < 4.84 A
        precision=args.precision,
        seed=args.seed,
        output_dir=args.output,
    )
    print(
        f"polmp demo: model {args.model}, 96-atom water box, NVT 300 K, dt 0.5 fs, "
        f"{args.equilibration} + {steps} steps -> {args.output}"
    )
    result = run_md(config)
    t = result.timings
    print(
        f"MD: mean T {result.records['temperature_K'].mean():.1f} K, "
        f"{t['steps_per_s']:.1f} steps/s with observables every 4 steps "
        f"(first chunk incl. compile {t['first_chunk_s']:.0f} s)"
    )
    peaks = write_spectra(args.output, experimental_ir=default_water_ir())
    print(peak_table(peaks))
    print(
        f"wrote observables.npz, trajectory.extxyz, spectra.npz, ir.png, raman.png in {args.output}"
    )
    return 0


def run_electrostatics(args: argparse.Namespace) -> int:
    """Long-range energy of the embedded water box with every method; prints a table."""
    _set_precision(args.precision)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from polmp.data.water import water_box
    from polmp.electrostatics import prepare_direct, prepare_solver

    frame = water_box(args.molecules_per_side, seed=args.seed)
    dtype = jnp.float64 if args.precision == "float64" else jnp.float32
    positions = jnp.asarray(frame.positions, dtype)
    cell = jnp.asarray(frame.cell, dtype)
    # Fixed, physically sized latents: TIP3P-like charges and small random dipoles.
    q = jnp.asarray(np.where(frame.numbers == 8, -0.834, 0.417), dtype)
    rng = np.random.default_rng(args.seed)
    mu = jnp.asarray(0.05 * rng.normal(size=(frame.num_atoms, 3)), dtype)
    kappa = jnp.full((frame.num_atoms,), 0.01, dtype)
    alpha = jnp.full((frame.num_atoms,), 0.01, dtype)

    print(
        f"polmp electrostatics: {frame.num_atoms}-atom water box, cell {float(frame.cell[0, 0]):.3f} A, "
        f"sigma {args.sigma} A, {args.precision}"
    )
    print(f"{'method':<28}{'E_lr (eV)':>16}{'max |F| (eV/A)':>18}{'time (ms)':>12}")
    rows = [
        ("ewald (converged)", dict(method="ewald")),
        ("pme (converged)", dict(method="pme")),
        ("ewald, les_compat k-set", dict(method="ewald", les_compat=True)),
    ]
    for label, options in rows:
        # long_range is host-only; inside jax.jit the prepared solver is the path
        solver = prepare_solver(
            cell,
            num_atoms=frame.num_atoms,
            sigma=args.sigma,
            accuracy=args.accuracy,
            max_multipole_order=1,
            **options,
        )

        def energy(r, solver=solver):
            return solver.long_range_fn(r, cell, q, mu, kappa=kappa, alpha=alpha).energy

        energy_and_forces = jax.jit(jax.value_and_grad(energy))
        (e, grad), ms = _timed(energy_and_forces, positions)
        print(
            f"{label:<28}{float(e):>16.8f}{float(jnp.abs(grad).max()):>18.6f}{ms:>12.2f}"
        )

    # The cluster limit: one molecule's neighbourhood cut out, summed directly.
    centre = frame.positions[:3].mean(0)
    keep = np.linalg.norm(frame.positions - centre, axis=1) < 6.0
    keep = np.repeat(keep.reshape(-1, 3).all(1), 3)  # whole molecules only
    direct = prepare_direct(sigma=args.sigma)
    cluster = jax.jit(lambda r: direct.long_range_fn(r, None, q[keep], mu[keep]).energy)
    e_cluster, ms = _timed(cluster, positions[keep])
    print(
        f"{f'direct, {keep.sum()}-atom cluster':<28}{float(e_cluster):>16.8f}{'':>18}{ms:>12.2f}"
    )
    return 0


def _load_run_config(path, overrides):
    from polmp.config.loader import load_config
    from polmp.config.schema import RunConfig

    return load_config(RunConfig, path, overrides)


def run_train(args: argparse.Namespace) -> int:
    """Train from a YAML config with dotted overrides; prints the final error tables."""
    config = _load_run_config(args.config, args.overrides)
    _set_precision(config.precision)
    from polmp.training.loop import train
    from polmp.training.metrics import format_table

    result = train(config, resume=args.resume, overwrite=args.overwrite)
    print(f"run directory: {result.run_dir}")
    print(format_table(result.metrics))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Train every point of a grid over config keys; print a summary table."""
    import dataclasses

    import yaml

    from polmp.config.loader import expand_sweep, parse_override, set_dotted
    from polmp.config.schema import RunConfig

    with open(args.config) as handle:
        base = yaml.safe_load(handle) or {}
    for text in args.overrides:
        key, value = parse_override(text)
        base = set_dotted(base, key, value)
    grid = dict(parse_override(text) for text in args.grid)
    points = expand_sweep(RunConfig, base, grid)
    _set_precision(points[0][1].precision)
    import gc

    from polmp.training.loop import clear_compiled, train

    rows = []
    for point, config in points:
        name = ",".join(f"{k}={v}" for k, v in point.items())
        run_dir = f"{config.output_dir}/{name.replace('/', '_')}"
        result = train(
            dataclasses.replace(config, output_dir=run_dir), overwrite=args.overwrite
        )
        # free the point's compiled code before the next model compiles its own
        clear_compiled()
        gc.collect()
        split = (
            "test"
            if "test" in result.metrics
            else "valid"
            if "valid" in result.metrics
            else "train"
        )
        m = result.metrics[split]
        rows.append(
            (
                name,
                split,
                m.get("energy_rmse_meV_per_atom"),
                m.get("forces_rmse_meV_per_A"),
            )
        )
    print(f"\n{'point':<40}{'set':>7}{'E RMSE (meV/atom)':>20}{'F RMSE (meV/A)':>17}")
    for name, split, e, f in rows:
        e_text = "-" if e is None else f"{e:.3f}"
        f_text = "-" if f is None else f"{f:.2f}"
        print(f"{name:<40}{split:>7}{e_text:>20}{f_text:>17}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Error table of a trained run (or one checkpoint) on a labelled data file."""
    _set_precision(args.precision)
    from polmp.data.sources import read_sources
    from polmp.training.loop import evaluate

    frames = read_sources(args.data, args.index, format=args.format)
    result = evaluate(args.run_dir, frames, parity_dir=args.output)
    print(result.table)
    offset = result.metrics.get("energy_mean_error_meV_per_atom")
    if offset is not None:
        print(f"mean signed energy error: {offset:.3f} meV/atom")
    print(f"wrote parity_energy.png, parity_forces.png in {args.output}")
    return 0


def run_md_verb(args: argparse.Namespace) -> int:
    """MD of a trained model with Pdot and alpha_sys recorded in the scan."""
    from polmp.config.loader import load_config
    from polmp.config.schema import MDConfig

    config = load_config(MDConfig, args.config, args.overrides)
    if config.num_steps < 1:
        raise ValueError(
            f"num_steps must be >= 1 for polmp md (got {config.num_steps}): a run "
            "records observables over its production steps"
        )
    out = pathlib.Path(config.output_dir)
    finished = [n for n in MD_RUN_FILES if (out / n).exists()]
    if finished and not args.overwrite:
        raise ValueError(
            f"{out} already holds an MD run ({', '.join(finished)}): pass --overwrite "
            "to replace it, or choose another output_dir"
        )
    _set_precision(config.precision)
    from polmp.md.simulate import run_md

    result = run_md(config)
    t = result.timings
    print(f"output directory: {result.output_dir}")
    print(
        f"{config.num_steps} steps, mean T {result.records['temperature_K'].mean():.1f} K, "
        f"{t['steps_per_s']:.1f} steps/s ({t['atom_steps_per_s']:.3g} atom-steps/s) "
        f"after a first chunk of {t['first_chunk_s']:.1f} s (compile), "
        f"{result.num_reallocations} neighbour-list reallocations"
    )
    if result.summary and "mean_density_g_per_cm3" in result.summary:
        print(f"mean density {result.summary['mean_density_g_per_cm3']:.4f} g/cm^3")
    return 0


def run_spectra(args: argparse.Namespace) -> int:
    """IR and Raman spectra (arrays, peaks, plots) of an MD output directory."""
    from polmp.observables.report import write_spectra

    experimental = args.experimental or default_water_ir()
    peaks = write_spectra(
        args.md_dir,
        experimental_ir=experimental,
        smoothing_fwhm_cm=args.smoothing,
        block_length_fs=args.block_fs,
    )
    print(f"wrote spectra.npz, peaks.json, ir.png, raman.png in {args.md_dir}")
    print(peak_table(peaks))
    return 0


def peak_table(peaks: dict) -> str:
    """Peak positions per spectrum and band (``write_spectra``'s result) as text.

    "-" marks a band without a peak above the noise; a spectrum whose signal is
    identically zero says so instead of listing bands.
    """
    from polmp.observables.report import WATER_BANDS_CM, ZERO_SIGNAL

    zero = set(peaks.get(ZERO_SIGNAL, ()))
    bands = tuple(WATER_BANDS_CM)
    lines = [f"{'spectrum':<16}" + "".join(f"{b:>12}" for b in bands) + "   (cm^-1)"]
    for name, found in peaks.items():
        if name == ZERO_SIGNAL:
            continue
        if name in zero:
            lines.append(f"{name:<16}  zero signal (identically zero, no peaks)")
            continue
        cells = "".join(
            f"{found[b]:>12.0f}" if b in found else f"{'-':>12}" for b in bands
        )
        lines.append(f"{name:<16}{cells}")
    lines.append("(-: no peak standing above the noise in that band)")
    return "\n".join(lines)


#: files of a finished ``polmp md`` run (not overwritten without --overwrite)
MD_RUN_FILES = ("md.json", "observables.npz", "trajectory.extxyz")

#: Default length of the demo MD (0.5 fs steps): equilibration, then recorded steps.
DEMO_EQUILIBRATION = 200
DEMO_STEPS = 1200


#: The experimental liquid-water IR (Segelstein 1981, refractiveindex.info, CC0) as
#: laid out in the project's reference data; read from there, never copied into the
#: package (the reference data folder mixes licences).
DEFAULT_WATER_IR = (
    "../shared/data/water_ir_optical_constants/refractiveindex_info/H2O_Segelstein.yml"
)


def default_water_ir() -> str | None:
    """Path of the experimental liquid-water IR when the reference data are present
    (``$POLMP_SHARED_DATA`` or ``../shared/data``), else None (no overlay)."""
    import os
    import pathlib

    root = os.environ.get("POLMP_SHARED_DATA")
    path = (
        pathlib.Path(root, *pathlib.Path(DEFAULT_WATER_IR).parts[3:])
        if root
        else pathlib.Path(DEFAULT_WATER_IR)
    )
    return str(path) if path.exists() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polmp", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback of an error"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    demo = verbs.add_parser(
        "demo", help="shipped water model -> MD -> IR/Raman spectra (the main job)"
    )
    demo.add_argument("--model", default="water-gfn2-full", help="model to run")
    demo.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help="recorded MD steps (a multiple of 100)",
    )
    demo.add_argument(
        "--equilibration",
        type=int,
        default=DEMO_EQUILIBRATION,
        help="unrecorded NVT steps first (a multiple of 100)",
    )
    demo.add_argument("--output", default="polmp-demo", help="output directory")
    demo.add_argument("--precision", choices=("float32", "float64"), default="float32")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)

    lr = verbs.add_parser(
        "electrostatics", help="long-range electrostatics of a water box, every method"
    )
    lr.add_argument("--precision", choices=("float32", "float64"), default="float64")
    lr.add_argument(
        "--molecules-per-side", type=int, default=4, help="box holds n^3 H2O"
    )
    lr.add_argument("--sigma", type=float, default=1.0, help="Gaussian smearing, A")
    lr.add_argument("--accuracy", type=float, default=1e-6, help="relative accuracy")
    lr.add_argument("--seed", type=int, default=0)
    lr.set_defaults(handler=run_electrostatics)

    train = verbs.add_parser("train", help="train a model from a YAML run config")
    train.add_argument(
        "config", help="YAML file (schema: polmp.config.schema.RunConfig)"
    )
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="resume from the last checkpoint"
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="replace a run in output_dir"
    )
    train.set_defaults(handler=run_train)

    sweep = verbs.add_parser(
        "sweep", help="train a grid of configs and tabulate errors"
    )
    sweep.add_argument("config")
    sweep.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        help="key=[v1, v2] (repeat for a product)",
    )
    sweep.add_argument(
        "--overwrite", action="store_true", help="replace runs of the grid points"
    )
    sweep.set_defaults(handler=run_sweep)

    evaluate = verbs.add_parser("evaluate", help="error table of a trained run on data")
    evaluate.add_argument(
        "run_dir",
        metavar="RUN",
        help="run directory, checkpoint directory, exported model or shipped name",
    )
    evaluate.add_argument(
        "data",
        help="labelled structures: a file (extxyz, RuNNer input.data, ...), a glob "
        "pattern or embedded:<set>",
    )
    evaluate.add_argument(
        "--output", default="polmp-evaluate", help="directory for the parity plots"
    )
    evaluate.add_argument("--format", default=None, help="file format (default: guess)")
    evaluate.add_argument(
        "--index", default=":", help="frames of each file, ASE style (e.g. 0:20)"
    )
    evaluate.add_argument(
        "--precision", choices=("float32", "float64"), default="float32"
    )
    evaluate.set_defaults(handler=run_evaluate)

    md = verbs.add_parser("md", help="MD of a trained model, recording spectra inputs")
    md.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML file (schema: polmp.config.schema.MDConfig); omitted: defaults",
    )
    md.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    md.add_argument(
        "--overwrite", action="store_true", help="replace an MD run in output_dir"
    )
    md.set_defaults(handler=run_md_verb)

    spectra = verbs.add_parser("spectra", help="IR/Raman spectra of an MD directory")
    spectra.add_argument("md_dir", help="output directory of `polmp md`")
    spectra.add_argument(
        "--experimental",
        default=None,
        help="refractiveindex.info file of liquid water to overlay "
        "(default: the experimental water IR shipped with polmp, Segelstein 1981)",
    )
    spectra.add_argument(
        "--smoothing", type=float, default=20.0, help="Gaussian FWHM, cm^-1"
    )
    spectra.add_argument(
        "--block-fs", type=float, default=None, help="correlation block length, fs"
    )
    spectra.set_defaults(handler=run_spectra)
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may also follow options
    (``polmp sweep CONFIG --grid ... output_dir=runs/x``), which argparse alone
    rejects once an option has ended the positional list."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    args.debug = debug
    config = getattr(args, "config", None)
    if (
        args.verb == "md"
        and config is not None
        and "=" in config
        and not os.path.exists(config)
    ):
        # `polmp md key=value` without a YAML: the first override is no config path
        args.overrides = [config, *(args.overrides or [])]
        args.config = None
    if extra:
        takes_overrides = hasattr(args, "overrides")
        if not takes_overrides or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one verb; an error prints one line on stderr (``--debug``: traceback)."""
    args = parse_arguments(argv)
    try:
        return args.handler(args)
    except Exception as err:  # noqa: BLE001 - every error gets the one-line form
        if args.debug:
            raise
        print(f"polmp {args.verb}: error: {error_line(err)}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return 1


def error_line(err: BaseException) -> str:
    """The message of ``err`` on one line; its type unless it is a plain input error."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (ValueError, OSError, KeyError)):
        return text
    return f"{type(err).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())

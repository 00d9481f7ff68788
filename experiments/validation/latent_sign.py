"""Fix the global sign of a trained model's latents once, and store it beside the model.

The sign is chosen against reference Born charges of non-periodic frames when the set
has them (sign of sum(Z*_pred Z*_ref)), else against the chemistry (electronegative
elements negative; ``polmp.training.trained.choose_latent_sign``); both statistics are
printed.  ``--write`` stores it as ``latents.yaml`` in the model directory, from where
``load_trained`` applies it to every output.

Usage (from the repository root)::

    python experiments/validation/latent_sign.py --model polmp/data/models/water_gfn2_full \
        --frames embedded:water-gfn2-clusters --max-frames 20 --write
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_frames(spec: str, max_frames: int):
    """Non-periodic frames of ``spec`` (``embedded:water-gfn2-clusters`` or a file)."""
    if spec == "embedded:water-gfn2-clusters":
        from polmp.data.embedded import load_water_gfn2

        frames = load_water_gfn2("clusters")
    else:
        from polmp.data.io import read_frames

        frames = read_frames(spec)
    return [f for f in frames if f.cell is None][:max_frames]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or name")
    parser.add_argument("--frames", default="embedded:water-gfn2-clusters")
    parser.add_argument("--max-frames", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="store latents.yaml")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from experiments.validation.response import padded_inputs
    from polmp.ase import make_observables
    from polmp.training.trained import (
        choose_latent_sign,
        load_trained,
        save_latent_sign,
    )

    model = load_trained(args.model).cast(jnp.float64)
    if model.latent_sign != 1 or model.latent_sign_note:
        print(
            f"loaded with stored sign {model.latent_sign:+d} ({model.latent_sign_note})"
        )
    frames = load_frames(args.frames, args.max_frames)
    observables = make_observables(model.energy_fns.outputs_fn, 1.0)
    charges, born = [], []
    for frame in frames:
        capacity = (frame.num_atoms + 1, None)
        graph, data = padded_inputs(model, frame, capacity, jnp.float64)
        q, _, bec = observables(model.params, graph, data, False)
        charges.append(np.asarray(q[: frame.num_atoms]))
        born.append(np.asarray(bec[: frame.num_atoms]))
    numbers = [f.numbers for f in frames]
    chem, chem_note = choose_latent_sign(charges, numbers)
    print(f"chemistry: {chem:+d} ({chem_note})")
    sign, note = chem, chem_note
    refs = [f.bec for f in frames]
    if all(r is not None for r in refs) and frames:
        sign, note = choose_latent_sign(
            charges, numbers, predicted=born, reference=refs
        )
        print(f"reference BEC: {sign:+d} ({note})")
        if sign != chem:
            print("warning: the reference and the chemistry disagree")
    # relative to the trained parameters
    total = sign * model.latent_sign
    print(f"sign to store (relative to the trained parameters): {total:+d}")
    if args.write:
        directory = pathlib.Path(args.model)
        if not directory.is_dir():
            from polmp.training.trained import _shipped_dir

            directory = _shipped_dir(args.model)
        note = f"{note}; {len(frames)} frames of {args.frames}"
        print("wrote", save_latent_sign(directory, total, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

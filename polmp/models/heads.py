"""Latent multipole heads, per-atom energy readout and per-species reference energies.

From the backbone features h_i (irreps ``C x 0e + C x 1o + C x 2e ...``) the heads give,
per atom i (docs/method.md#model; units of the latents as there):

    q_i      (N, C_q)   0e      e          q_scale * W_q h_i
    mu_i     (N, 3)     1o      e*A        mu_scale * W_mu h_i          (polar vector)
    Theta_i  (N, 3, 3)  2e      e*A^2      theta_scale * T(W_Theta h_i)  (traceless)
    kappa_i  (N,)       0e      e^2/eV     kappa_scale * softplus(W_k h_i + b)   (>= 0)
    alpha_i  (N,)       0e      e^2A^2/eV  alpha_scale * softplus(W_a h_i + b)   (>= 0)
          or (N, 3, 3)  0e+1o              alpha_scale * (a0 I + sum_c w_c v_c v_c^T)
                                             a0, w_c = softplus(.) >= 0  (PSD)
    E_i      (N,)       0e      eV         energy_scale * MLP(h_i 0e) + E_ref[Z_i]

With ``total_charge_shift`` "uniform" or "softness" the charges q are then shifted per
structure so that they sum to its total charge (``polmp.models.total_charge``); the
softness weights s_i = softplus(W_s h_i + b) + s_min come from one more 0e head.

Every output is zero on padding atoms.  T is ``l2_to_symmetric_traceless``, the single
place where an l = 2 irrep becomes a Cartesian tensor (docs/method.md#model).

Conventions.
    * e3nn-jax orders the 1o components as (x, y, z), so D^1(R) = R and mu rotates as
      R mu; under inversion mu -> -mu.
    * Theta is the traceless primitive second moment (docs/method.md#multipoles):
      it enters S(k) as -1/2 k^T Theta k, i.e. Theta_ab ~ sum q r_a r_b (traceless
      part), with no factor 3/2 (Buckingham) and no 1/2.  The map T is an isometry
      between the 5 components and the Frobenius norm (||T(v)||_F = |v|), equivariant:
      T(D^2(R) v) = R T(v) R^T, and T(v) is unchanged under inversion (2e is even).
"""

from __future__ import annotations

import dataclasses
import functools

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from polmp.models.config import ModelConfig
from polmp.models.layers import MLP, linear
from polmp.models.total_charge import shift_to_total_charge

#: floor of the softness weights s_i (dimensionless), so that sum_i s_i > 0 even when
#: softplus underflows; only ratios of s within a structure matter.
SOFTNESS_FLOOR = 1e-3


@functools.lru_cache(maxsize=1)
def _l2_basis() -> np.ndarray:
    """(3, 3, 5) orthonormal map from the e3nn 2e components to symmetric traceless 3x3.

    sqrt(5) times the e3nn Clebsch-Gordan coefficients C^{1 1 2}: each 3x3 slice is
    symmetric and traceless, and the slices are orthonormal in the Frobenius product.
    """
    cg = np.asarray(e3nn.clebsch_gordan(1, 1, 2), dtype=np.float64)  # (3, 3, 5)
    return np.sqrt(5.0) * cg


def l2_to_symmetric_traceless(x: jax.Array) -> jax.Array:
    """Map l = 2 irrep components (e3nn order) to a symmetric traceless 3x3 tensor.

    The one conversion function of the package; its inverse is
    ``symmetric_traceless_to_l2``.  Isometric: sum_ab T_ab^2 = sum_m x_m^2.

    Args:
        x: Float[Array, '... 5'], components of a 2e (or 2o) irrep.

    Returns:
        Float[Array, '... 3 3'] with T(D^2(R) x) = R T(x) R^T.
    """
    basis = jnp.asarray(_l2_basis(), dtype=x.dtype)
    return jnp.einsum("abm,...m->...ab", basis, x)


def symmetric_traceless_to_l2(t: jax.Array) -> jax.Array:
    """Inverse of ``l2_to_symmetric_traceless`` (symmetric traceless part).

    Args:
        t: Float[Array, '... 3 3'].

    Returns:
        Float[Array, '... 5'], e3nn 2e components.
    """
    basis = jnp.asarray(_l2_basis(), dtype=t.dtype)
    return jnp.einsum("abm,...ab->...m", basis, t)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["energy", "q", "mu", "theta", "kappa", "alpha"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class AtomicOutputs:
    """Per-atom outputs of the short-range model (``None`` for heads switched off).

    Attributes:
        energy: Float[Array, 'N'], eV, E_i including the reference energies.
        q: Float[Array, 'N C'], e.
        mu: Float[Array, 'N 3'], e*A.
        theta: Float[Array, 'N 3 3'], e*A^2, symmetric traceless.
        kappa: Float[Array, 'N'], e^2/eV, >= 0.
        alpha: Float[Array, 'N'] or Float[Array, 'N 3 3'], e^2*A^2/eV, >= 0 / PSD.
    """

    energy: jax.Array
    q: jax.Array | None = None
    mu: jax.Array | None = None
    theta: jax.Array | None = None
    kappa: jax.Array | None = None
    alpha: jax.Array | None = None


class LatentHeads(nn.Module):
    """Heads for the latents enabled by ``config.variant`` and the per-atom energy.

    Attributes:
        config: the model configuration (variant, alpha_kind, output scales, reference
            energies).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        h: e3nn.IrrepsArray,
        index: jax.Array,
        atom_mask: jax.Array,
        atom_graph: jax.Array | None = None,
        total_charge: jax.Array | None = None,
    ) -> AtomicOutputs:
        """Apply the heads.

        Args:
            h: IrrepsArray (N, irreps.dim), backbone features.
            index: Int[Array, 'N'], species index (0 = padding or unknown species).
            atom_mask: Bool[Array, 'N'].
            atom_graph: Int[Array, 'N'], graph of each atom; needed (with
                ``total_charge``) when ``config.total_charge_shift`` is not "none".
            total_charge: Float[Array, 'G'], e, the structures' total charges.

        Returns:
            AtomicOutputs, every array zero on padding atoms, in h's dtype.

        Raises:
            ValueError: a total-charge shift is configured but ``atom_graph`` or
                ``total_charge`` is missing.
        """
        cfg = self.config
        dtype = h.dtype
        mask = atom_mask.astype(dtype)  # (N,)

        def masked(x):
            return x * mask.reshape(mask.shape + (1,) * (x.ndim - 1))

        scalars = h.filter(keep=["0e"]).array  # (N, C)

        # Per-atom energy: MLP of the invariant channels + per-species reference.
        e_atom = MLP((cfg.readout_hidden, 1))(scalars)[:, 0] * cfg.energy_scale
        if cfg.reference_energies_eV is not None:
            e_ref = jnp.asarray((0.0, *cfg.reference_energies_eV), dtype=dtype)
            e_atom = e_atom + e_ref[index]
        # A real atom whose species the model does not know (index 0) gets NaN energy:
        # loud, instead of silently treating it as padding.
        unknown = atom_mask & (index == 0)
        e_atom = jnp.where(unknown, jnp.nan, e_atom)
        out = {"energy": jnp.where(atom_mask, e_atom, jnp.zeros_like(e_atom))}

        if cfg.use_q:
            q = linear(f"{cfg.num_charge_channels}x0e")(h).array  # (N, C_q)
            out["q"] = masked(cfg.q_scale * q)
            if cfg.total_charge_shift != "none":
                out["q"] = self._shift_charges(
                    h, out["q"], atom_mask, atom_graph, total_charge
                )
        if cfg.use_mu:
            mu = linear("1x1o")(h).array  # (N, 3)
            out["mu"] = masked(cfg.mu_scale * mu)
        if cfg.use_theta:
            t = linear("1x2e")(h).array  # (N, 5)
            theta = l2_to_symmetric_traceless(t)  # (N, 3, 3)
            out["theta"] = masked(cfg.theta_scale * theta)
        if cfg.use_kappa:
            k = linear("1x0e", biases=True)(h).array[:, 0]  # (N,)
            out["kappa"] = masked(cfg.kappa_scale * jax.nn.softplus(k))
        if cfg.use_alpha:
            out["alpha"] = masked(cfg.alpha_scale * self._alpha(h))
        return AtomicOutputs(**out)

    def _shift_charges(self, h, q, atom_mask, atom_graph, total_charge) -> jax.Array:
        """q shifted per structure to its total charge (uniform or softness weights)."""
        if atom_graph is None or total_charge is None:
            raise ValueError(
                f"total_charge_shift={self.config.total_charge_shift!r} needs the "
                "atom_graph and total_charge of the graph"
            )
        if self.config.total_charge_shift == "softness":
            s = linear("1x0e", biases=True, name="softness")(h).array[:, 0]
            weights = jax.nn.softplus(s) + SOFTNESS_FLOOR  # (N,) > 0
        else:
            weights = jnp.ones(q.shape[:1], q.dtype)
        return shift_to_total_charge(q, weights, atom_graph, atom_mask, total_charge)

    def _alpha(self, h: e3nn.IrrepsArray) -> jax.Array:
        """Unscaled alpha: softplus(s) (N,) or a0 I + sum_c w_c v_c v_c^T (N, 3, 3)."""
        cfg = self.config
        if cfg.alpha_kind == "isotropic":
            a = linear("1x0e", biases=True, name="alpha_iso")(h).array[:, 0]
            return jax.nn.softplus(a)
        num_v = cfg.num_alpha_vectors
        s = linear(f"{1 + num_v}x0e", biases=True, name="alpha_scalars")(h).array
        a0 = jax.nn.softplus(s[:, 0])  # (N,)
        w = jax.nn.softplus(s[:, 1:])  # (N, K)
        v = linear(f"{num_v}x1o", name="alpha_vectors")(h).array.reshape(-1, num_v, 3)
        eye = jnp.eye(3, dtype=h.dtype)
        alpha = a0[:, None, None] * eye + jnp.einsum("nc,nca,ncb->nab", w, v, v)
        assert alpha.shape == (h.shape[0], 3, 3)
        return alpha


def fit_reference_energies(species_counts, energies, *, rcond=None) -> np.ndarray:
    """Least-squares per-species reference energies.  Host side, not jittable.

    Solves min_e sum_f (energies_f - sum_s counts_fs e_s)^2.  When the counts are rank
    deficient (e.g. every frame has the H2O stoichiometry) the minimum-norm solution is
    returned, which still reproduces every energy of such data sets.

    Args:
        species_counts: (F, S) array, number of atoms of species s in frame f (order of
            ``ModelConfig.species`` order).
        energies: (F,) array, eV, total energies.
        rcond: passed to ``numpy.linalg.lstsq``.

    Returns:
        (S,) float64 array, eV per atom; pass it as ``reference_energies_eV``.

    Raises:
        ValueError: on mismatching shapes or non-finite input.
    """
    counts = np.asarray(species_counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    if counts.ndim != 2 or energies.shape != (counts.shape[0],):
        raise ValueError(
            f"expected counts (F, S) and energies (F,), got {counts.shape}, "
            f"{energies.shape}"
        )
    if not (np.isfinite(counts).all() and np.isfinite(energies).all()):
        raise ValueError("species_counts and energies must be finite")
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=rcond)
    return solution


def count_species(species, atom_graph, num_graphs: int, species_list) -> np.ndarray:
    """Per-graph species counts (for ``fit_reference_energies``).  Not jittable.

    Args:
        species: (N,) atomic numbers (0 = padding, ignored).
        atom_graph: (N,) graph index of each atom.
        num_graphs: G.
        species_list: the model's atomic numbers (column order of the result).

    Returns:
        (G, S) int64 counts.
    """
    species = np.asarray(species)
    atom_graph = np.asarray(atom_graph)
    counts = np.zeros((num_graphs, len(species_list)), dtype=np.int64)
    for s, z in enumerate(species_list):
        np.add.at(counts[:, s], atom_graph[species == z], 1)
    return counts

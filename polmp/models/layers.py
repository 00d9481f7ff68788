"""Equivariant short-range backbone: species embedding and NequIP-style interactions.

Contract.  ``Backbone(config)(graph, positions, cell)`` maps a padded ``Graph`` to
per-atom features, an ``e3nn.IrrepsArray`` of shape (N, irreps.dim) with irreps
``C x 0e + C x 1o + C x 2e + ...`` up to ``l_max`` (natural parity, (-1)^l), where
C = ``config.num_channels``.  Padding atoms (species 0, ``atom_mask`` False) get
exactly zero features; padded edges (``edge_mask`` False, zero length) contribute
nothing.

One interaction layer (Batzner et al., NequIP, Nat. Commun. 13, 2453 (2022)):

    h_j'        = W_1 h_j                                          (self-interaction)
    m_ij        = R(r_ij) u(r_ij) * [h_j' (x) Y(r_ij / r_ij)]       (per path weights)
    a_i         = 1/avg_num_neighbors * sum_{j in N(i)} m_ij        (scatter over idx_i)
    h_i^{new}   = Gate( W_2 a_i + W_sc[species_i] h_i ) (+ h_i when the irreps match)

with Y the real spherical harmonics up to ``l_max`` (e3nn "component" normalisation),
R an MLP of the Bessel basis giving one weight per tensor-product path and channel, u
the polynomial cutoff envelope (radial.py) and W_sc a species-indexed linear map.

dtype: the compute dtype follows ``positions``; parameters are created in float32 (also
under x64) and promoted where they meet the float64 activations.

Edge vectors follow the Graph convention r_ij = R[j] - R[i] + shifts_ij @ cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from polmp.geometry.graph import Graph, edge_vectors
from polmp.geometry.safe import safe_divide, safe_norm
from polmp.models.config import ModelConfig
from polmp.models.radial import radial_embedding


def _normal_f32():
    """Initializer N(0, 1) in float32 whatever dtype the caller asks for."""

    def init(key, shape, dtype=jnp.float32):
        del dtype  # parameters are always stored in float32
        return jax.random.normal(key, shape, jnp.float32)

    return init


def linear(irreps_out, **kwargs) -> e3nn.flax.Linear:
    """e3nn equivariant linear map with float32 parameters.

    "path" gradient normalisation puts the 1/sqrt(fan-in) factor in the forward pass, so
    N(0, 1) float32 weights are correctly scaled; ``force_irreps_out`` keeps outputs the
    input cannot reach (as zeros) so that shapes never depend on the input irreps.
    """
    return e3nn.flax.Linear(
        irreps_out,
        gradient_normalization="path",
        parameter_initializer=_normal_f32,
        force_irreps_out=True,
        **kwargs,
    )


def _weighted_sh_paths(irreps_in: e3nn.Irreps, irreps_sh: e3nn.Irreps, filter_ir_out):
    """Static plan of ``weighted_sh_tensor_product``: paths, output irreps, weight slots.

    Paths are enumerated as ``e3nn.tensor_product`` does (input chunk, then harmonic,
    then output irrep), and the output is laid out as its regrouped output: paths
    stably sorted by output irrep, channels of one path contiguous.

    Returns:
        ``(paths, irreps_out)``; each path is ``(a, b, ir_out, cg, weight_offset)``
        with ``a``/``b`` the chunk indices of the input and the harmonics, ``cg`` the
        (d_a, d_b, d_out) Clebsch-Gordan block with "component" normalisation and
        ``weight_offset`` the first column of the path in the per-irrep weights.
    """
    filter_ir_out = [e3nn.Irrep(ir) for ir in filter_ir_out]
    paths = []
    for a, (mul_a, ir_a) in enumerate(irreps_in):
        for b, (mul_b, ir_b) in enumerate(irreps_sh):
            if mul_b != 1:
                raise ValueError(f"harmonics must have multiplicity 1, got {irreps_sh}")
            for ir_out in ir_a * ir_b:
                if ir_out in filter_ir_out:
                    paths.append((a, b, mul_a, ir_out))
    order = sorted(range(len(paths)), key=lambda k: paths[k][3])  # stable
    offsets, offset = {}, 0
    for k in order:
        offsets[k] = offset
        offset += paths[k][2]
    plan = []
    for k in order:
        a, b, mul_a, ir_out = paths[k]
        ir_a, ir_b = irreps_in[a].ir, irreps_sh[b].ir
        cg = np.sqrt(ir_out.dim) * np.asarray(
            e3nn.clebsch_gordan(ir_a.l, ir_b.l, ir_out.l), dtype=np.float64
        )
        plan.append((a, b, ir_out, cg, offsets[k]))
    irreps_out = e3nn.Irreps([(paths[k][2], paths[k][3]) for k in order]).simplify()
    return plan, irreps_out


def weighted_sh_tensor_product(
    x: e3nn.IrrepsArray,
    sh: e3nn.IrrepsArray,
    weights: jax.Array,
    filter_ir_out,
) -> e3nn.IrrepsArray:
    """Per-edge weighted tensor product of features with spherical harmonics.

    Equal (to rounding) to
    ``e3nn.tensor_product(x, sh, filter_ir_out=filter_ir_out) * weights``, written for
    speed: each path contracts the harmonics with its Clebsch-Gordan block first,
    T_p[e, i, k] = sum_j Y_b[e, j] C_p[i, j, k] (cheap: no channel axis), then
    m_p[e, u, k] = w_p[e, u] sum_i x_a[e, u, i] T_p[e, i, k] as broadcast products
    that XLA fuses, instead of three-operand einsums and a Clebsch-Gordan product for
    the per-irrep weights (the two dominated the profile in benchmarks/README.md).

    Args:
        x: IrrepsArray (E, x.irreps.dim), e.g. neighbour features.
        sh: IrrepsArray (E, sh.dim), harmonics with multiplicity 1 per irrep.
        weights: Float[Array, 'E num_irreps_out'], one weight per output irrep
            (path and channel), in the order of the regrouped output.
        filter_ir_out: output irreps to keep.

    Returns:
        IrrepsArray (E, irreps_out.dim) with the irreps and layout of the regrouped
        ``e3nn.tensor_product``.
    """
    x = x.regroup()
    sh = sh.regroup()
    plan, irreps_out = _weighted_sh_paths(x.irreps, sh.irreps, filter_ir_out)
    if weights.shape[-1] != irreps_out.num_irreps:
        raise ValueError(
            f"weights have {weights.shape[-1]} columns, the product has "
            f"{irreps_out.num_irreps} irreps ({irreps_out})"
        )
    lead = x.shape[:-1]
    xs, ys = x.chunks, sh.chunks  # (..., mul, d) each
    pieces = []
    for a, b, ir_out, cg, offset in plan:
        xa = xs[a]
        mul = x.irreps[a].mul
        w = weights[..., offset : offset + mul, None]  # (..., mul, 1)
        if xa is None or ys[b] is None:
            pieces.append(jnp.zeros(lead + (mul * ir_out.dim,), x.dtype))
            continue
        t = jnp.einsum("...j,ijk->...ik", ys[b][..., 0, :], cg.astype(x.dtype))
        if xa.shape[-1] == 1:  # scalar input: an outer product
            m = xa * t[..., None, 0, :]
        else:  # (..., mul, d_a, 1) * (..., 1, d_a, d_out) summed over d_a
            m = jnp.sum(xa[..., :, :, None] * t[..., None, :, :], axis=-2)
        pieces.append((m * w).reshape(lead + (mul * ir_out.dim,)))
    return e3nn.IrrepsArray(irreps_out, jnp.concatenate(pieces, axis=-1))


def hidden_irreps(num_channels: int, l_max: int) -> e3nn.Irreps:
    """Irreps of the hidden features: ``C x 0e + C x 1o + C x 2e + ...`` up to l_max."""
    return e3nn.Irreps(
        [(num_channels, (l, (-1) ** l)) for l in range(l_max + 1)]
    ).simplify()


def species_index_table(species: Sequence[int]) -> np.ndarray:
    """Host lookup table atomic number -> model species index (0 = padding/unknown).

    Args:
        species: atomic numbers known to the model, in config order.

    Returns:
        Int array (max(species)+1,): ``table[Z] = k + 1`` if ``species[k] == Z``, 0
        elsewhere.
    """
    table = np.zeros(max(species) + 1, dtype=np.int32)
    for k, z in enumerate(species):
        table[z] = k + 1
    return table


def species_to_index(species: jax.Array, species_list: Sequence[int]) -> jax.Array:
    """Map atomic numbers to indices 1..S (config order); padding and unknown -> 0.

    Args:
        species: Int[Array, 'N'] atomic numbers (0 = padding).
        species_list: the model's atomic numbers.

    Returns:
        Int[Array, 'N'] int32 indices into per-species parameters.
    """
    table = jnp.asarray(species_index_table(species_list))
    # mode="fill" maps atomic numbers beyond the table to 0 instead of clamping them
    # onto the last real species.
    return jnp.take(table, species, mode="fill", fill_value=0)


def safe_edge_lengths(
    vectors: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Lengths and unit vectors of edges, finite to second order at padded (zero) edges.

    Uses ``polmp.geometry.safe`` (double-where), so value, gradient and Hessian stay
    finite for the zero-length padded edges; masked edges give exactly 0.

    Args:
        vectors: Float[Array, 'E 3'], A.
        mask: Bool[Array, 'E'], real edges.

    Returns:
        ``(r, unit)``: Float[Array, 'E'] A (0 for masked edges) and Float[Array, 'E 3']
        (0 for masked edges).
    """
    vectors = jnp.where(mask[:, None], vectors, jnp.zeros_like(vectors))
    r = safe_norm(vectors, axis=-1)  # (E,)
    unit = safe_divide(vectors, r[:, None])  # (E, 3)
    return r, unit


class MLP(nn.Module):
    """Plain MLP (SiLU) on scalars with float32 parameters.

    Attributes:
        features: widths of all layers, the last one being the output width.
        use_bias: whether the dense layers have biases.
        activate_last: apply SiLU after the last layer too.
    """

    features: tuple[int, ...]
    use_bias: bool = True
    activate_last: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Args: x (..., F_in).  Returns: (..., features[-1]) in x's dtype."""
        for k, width in enumerate(self.features):
            x = nn.Dense(width, use_bias=self.use_bias, param_dtype=jnp.float32)(x)
            if k < len(self.features) - 1 or self.activate_last:
                x = jax.nn.silu(x)
        return x


class SpeciesEmbedding(nn.Module):
    """Learned scalar features per species; index 0 (padding) gives exactly zero.

    Attributes:
        num_species: number of real species S (indices 1..S).
        num_channels: C.
    """

    num_species: int
    num_channels: int

    @nn.compact
    def __call__(self, index: jax.Array, dtype) -> e3nn.IrrepsArray:
        """Args: index Int[Array, 'N'] in 0..S; dtype of the output.

        Returns: IrrepsArray (N, C) with irreps ``C x 0e``.
        """
        table = self.param(
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_species + 1, self.num_channels),
            jnp.float32,
        )
        h = table.astype(dtype)[index]  # (N, C)
        h = jnp.where((index > 0)[:, None], h, jnp.zeros_like(h))
        return e3nn.IrrepsArray(f"{self.num_channels}x0e", h)


class Interaction(nn.Module):
    """One NequIP-style interaction layer on a padded edge list (module docstring).

    Attributes:
        irreps_out: irreps of the output features (before the gate picks its scalars).
        num_species: S, for the species-indexed self-connection.
        radial_mlp: hidden widths of the radial MLP.
        avg_num_neighbors: message normalisation.
    """

    irreps_out: e3nn.Irreps
    num_species: int
    radial_mlp: tuple[int, ...]
    avg_num_neighbors: float

    @nn.compact
    def __call__(
        self,
        h: e3nn.IrrepsArray,
        index: jax.Array,
        sh: e3nn.IrrepsArray,
        basis: jax.Array,
        edge_weight: jax.Array,
        idx_i: jax.Array,
        idx_j: jax.Array,
        atom_mask: jax.Array,
    ) -> e3nn.IrrepsArray:
        """Apply the layer.

        Args:
            h: IrrepsArray (N, irreps_in.dim), node features.
            index: Int[Array, 'N'] species index (0 = padding).
            sh: IrrepsArray (E, sh.dim), spherical harmonics of the edge unit vectors.
            basis: Float[Array, 'E B'], Bessel basis of the edge lengths.
            edge_weight: Float[Array, 'E'], envelope u(r) times edge_mask.
            idx_i, idx_j: Int[Array, 'E'], centre and neighbour.
            atom_mask: Bool[Array, 'N'].

        Returns:
            IrrepsArray (N, irreps_out.dim), zero on padding atoms.
        """
        num_atoms = h.shape[0]
        irreps_out = e3nn.Irreps(self.irreps_out)
        scalars_out = irreps_out.filter(keep=["0e"])
        nonscalars = irreps_out.filter(drop=["0e", "0o"])
        # Gate input: output scalars, one extra gate scalar per non-scalar irrep, then
        # the non-scalars (e3nn.gate takes the *last* scalars as gates).
        irreps_gate_in = (
            scalars_out + e3nn.Irreps(f"{nonscalars.num_irreps}x0e") + nonscalars
        )

        h_self = linear(h.irreps)(h)
        # Message: tensor product of neighbour features with Y, restricted to outputs
        # the gate input can use.
        _, irreps_tp = _weighted_sh_paths(
            h_self.regroup().irreps, sh.regroup().irreps, irreps_gate_in
        )
        weights = MLP((*self.radial_mlp, irreps_tp.num_irreps), use_bias=False)(
            basis
        )  # (E, num_irreps)
        # u(r) * edge_mask zeroes messages beyond r_c and on padded edges.
        weights = weights * edge_weight[:, None]
        messages = weighted_sh_tensor_product(
            h_self[idx_j], sh, weights, irreps_gate_in
        )  # (E, tp.dim)
        assert messages.shape[0] == idx_i.shape[0]
        aggregated = e3nn.scatter_sum(messages, dst=idx_i, output_size=num_atoms)
        aggregated = aggregated / self.avg_num_neighbors  # (N, tp.dim)

        update = linear(irreps_gate_in)(aggregated)
        self_connection = linear(
            irreps_gate_in, num_indexed_weights=self.num_species + 1
        )(index, h)
        out = e3nn.gate(update + self_connection)  # (N, irreps_out.dim)
        out = out.rechunk(irreps_out) if out.irreps != irreps_out else out
        if h.irreps == out.irreps:
            out = out + h
        return out * atom_mask[:, None].astype(out.dtype)


class Backbone(nn.Module):
    """Species embedding followed by ``num_layers`` interaction layers.

    Attributes:
        config: the model configuration (cutoff, l_max, channels, layers, radial MLP).
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, graph: Graph, positions: jax.Array | None = None, cell=None
    ) -> e3nn.IrrepsArray:
        """Per-atom equivariant features.

        Args:
            graph: padded Graph.
            positions: Float[Array, 'N 3'], A; defaults to ``graph.positions`` (pass it
                to differentiate).
            cell: Float[Array, 'G 3 3'], A; defaults to ``graph.cell``.

        Returns:
            IrrepsArray (N, hidden_irreps.dim), positions' dtype; zero on padding atoms.
        """
        cfg = self.config
        positions = graph.positions if positions is None else positions
        cell = graph.cell if cell is None else cell
        dtype = positions.dtype
        cell = cell.astype(dtype)

        index = species_to_index(graph.species, cfg.species)
        index = jnp.where(graph.atom_mask, index, 0)
        vectors = edge_vectors(graph, positions, cell)  # (E, 3)
        r, unit = safe_edge_lengths(vectors, graph.edge_mask)
        basis, envelope = radial_embedding(
            r, cfg.cutoff_A, cfg.num_basis, cfg.envelope_p
        )
        edge_weight = jnp.where(graph.edge_mask, envelope, jnp.zeros_like(envelope))
        # normalize=False on a unit vector: same values as normalised SH, but no
        # division by |r| inside e3nn (the zero-length padded edges stay finite).
        sh = e3nn.spherical_harmonics(
            e3nn.Irreps.spherical_harmonics(cfg.l_max), unit, normalize=False
        )  # (E, (l_max+1)^2)

        h = SpeciesEmbedding(cfg.num_species, cfg.num_channels)(index, dtype)
        irreps = hidden_irreps(cfg.num_channels, cfg.l_max)
        for _ in range(cfg.num_layers):
            h = Interaction(
                irreps,
                cfg.num_species,
                cfg.radial_mlp,
                cfg.avg_num_neighbors,
            )(
                h,
                index,
                sh,
                basis,
                edge_weight,
                graph.idx_i,
                graph.idx_j,
                graph.atom_mask,
            )
        return h

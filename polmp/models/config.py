"""Model configuration: a frozen, hashable dataclass validated on construction.

The variant string decides which latent heads exist (docs/method.md#variants):

    =============  ===  ===  =====  =====  =====
    variant        q    mu   Theta  kappa  alpha
    =============  ===  ===  =====  =====  =====
    sr             .    .    .      .      .
    q              x    .    .      .      .
    q+mu           x    x    .      .      .
    q+mu+theta     x    x    x      .      .
    q+mu+dq        x    x    .      x      .
    q+mu+dmu       x    x    .      .      x
    q+mu+dq+dmu    x    x    .      x      x
    full           x    x    x      x      x
    =============  ===  ===  =====  =====  =====

A head that is switched off has no parameters and costs nothing.
"""

from __future__ import annotations

import dataclasses

#: variant -> (use_q, use_mu, use_theta, use_kappa, use_alpha)
VARIANTS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "sr": (False, False, False, False, False),
    "q": (True, False, False, False, False),
    "q+mu": (True, True, False, False, False),
    "q+mu+theta": (True, True, True, False, False),
    "q+mu+dq": (True, True, False, True, False),
    "q+mu+dmu": (True, True, False, False, True),
    "q+mu+dq+dmu": (True, True, False, True, True),
    "full": (True, True, True, True, True),
}

#: accepted values of ``ModelConfig.alpha_kind``
ALPHA_KINDS: tuple[str, ...] = ("isotropic", "anisotropic")

#: accepted values of ``ModelConfig.total_charge_shift`` (docs/total_charge.md)
TOTAL_CHARGE_SHIFTS: tuple[str, ...] = ("none", "uniform", "softness")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the equivariant short-range network and its latent heads.

    Attributes:
        species: atomic numbers the model knows, e.g. ``(1, 8)``; species 0 is padding
            and must not be listed.
        cutoff_A: radial cutoff r_c, A.
        l_max: largest rotation order of the hidden features and edge spherical
            harmonics (>= 1 for mu or anisotropic alpha, >= 2 for Theta).
        num_channels: multiplicity of every irrep of the hidden features.
        num_layers: number of interaction layers (>= 1).
        num_basis: number of radial Bessel functions.
        radial_mlp: hidden widths of the radial MLP (edge weights), e.g. ``(16, 16)``.
        envelope_p: order p of the polynomial cutoff envelope.
        avg_num_neighbors: messages are divided by this number (set it from data).
        readout_hidden: hidden width of the per-atom energy MLP.
        variant: one of ``VARIANTS``.
        alpha_kind: ``"isotropic"`` (alpha_i scalar) or ``"anisotropic"``
            (alpha_i = a0 I + sum_c w_c v_c v_c^T, PSD by construction).
        num_alpha_vectors: number of 1o vectors v_c of the anisotropic alpha.
        num_charge_channels: channels C of the latent charge q (N, C).
        q_scale: output scale of q, e.
        mu_scale: output scale of mu, e*A.
        theta_scale: output scale of Theta, e*A^2.
        kappa_scale: output scale of kappa, e^2/eV.
        alpha_scale: output scale of alpha, e^2*A^2/eV.
        energy_scale: scale of the learned per-atom energy, eV.
        reference_energies_eV: per-species reference energies (same order as
            ``species``), eV, added to the per-atom energy; ``None`` -> zeros.  Fit
            them with ``polmp.models.heads.fit_reference_energies``.
        total_charge_shift: how the latent charges honour the structure's total charge
            ``Graph.total_charge`` (docs/total_charge.md): ``"none"`` (free latent
            charges, as in the paper), ``"uniform"`` (every atom of a structure shifted
            by the same amount so that they sum to Q) or ``"softness"`` (shifted in
            proportion to a learned per-atom softness s_i > 0, as in
            charge-equilibration models).  Needs a variant with q.
    """

    species: tuple[int, ...]
    cutoff_A: float = 5.0
    l_max: int = 2
    num_channels: int = 32
    num_layers: int = 2
    num_basis: int = 8
    radial_mlp: tuple[int, ...] = (64, 64)
    envelope_p: int = 6
    avg_num_neighbors: float = 10.0
    readout_hidden: int = 16
    variant: str = "full"
    alpha_kind: str = "isotropic"
    num_alpha_vectors: int = 2
    num_charge_channels: int = 1
    q_scale: float = 0.1
    mu_scale: float = 0.1
    theta_scale: float = 0.1
    kappa_scale: float = 0.01
    alpha_scale: float = 0.01
    energy_scale: float = 1.0
    reference_energies_eV: tuple[float, ...] | None = None
    total_charge_shift: str = "none"

    def __post_init__(self):
        # Normalise sequences to tuples so that the config stays hashable.
        object.__setattr__(self, "species", tuple(int(z) for z in self.species))
        object.__setattr__(self, "radial_mlp", tuple(int(h) for h in self.radial_mlp))
        if self.reference_energies_eV is not None:
            object.__setattr__(
                self,
                "reference_energies_eV",
                tuple(float(e) for e in self.reference_energies_eV),
            )
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown variant {self.variant!r}; expected one of {sorted(VARIANTS)}"
            )
        if self.alpha_kind not in ALPHA_KINDS:
            raise ValueError(
                f"unknown alpha_kind {self.alpha_kind!r}; expected one of {ALPHA_KINDS}"
            )
        if self.total_charge_shift not in TOTAL_CHARGE_SHIFTS:
            raise ValueError(
                f"unknown total_charge_shift {self.total_charge_shift!r}; expected one "
                f"of {TOTAL_CHARGE_SHIFTS}"
            )
        if self.total_charge_shift != "none" and not self.use_q:
            raise ValueError(
                f"total_charge_shift={self.total_charge_shift!r} shifts the latent "
                f"charges, but variant {self.variant!r} has none"
            )
        if not self.species:
            raise ValueError("species must list at least one atomic number")
        if len(set(self.species)) != len(self.species):
            raise ValueError(f"species must be unique, got {self.species}")
        if min(self.species) < 1:
            raise ValueError("species are atomic numbers >= 1 (0 is padding)")
        if not self.cutoff_A > 0:
            raise ValueError(f"cutoff_A must be positive, got {self.cutoff_A}")
        for name in ("num_channels", "num_layers", "num_basis", "readout_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_charge_channels < 1 or self.num_alpha_vectors < 1:
            raise ValueError("num_charge_channels and num_alpha_vectors must be >= 1")
        if any(h < 1 for h in self.radial_mlp):
            raise ValueError(f"radial_mlp widths must be >= 1, got {self.radial_mlp}")
        if self.l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {self.l_max}")
        if self.envelope_p < 2:
            raise ValueError(f"envelope_p must be >= 2, got {self.envelope_p}")
        if not self.avg_num_neighbors > 0:
            raise ValueError("avg_num_neighbors must be positive")
        needs_l1 = self.use_mu or (self.use_alpha and self.alpha_kind == "anisotropic")
        if needs_l1 and self.l_max < 1:
            raise ValueError(f"variant {self.variant!r} needs l_max >= 1")
        if self.use_theta and self.l_max < 2:
            raise ValueError(f"variant {self.variant!r} (Theta) needs l_max >= 2")
        for name in (
            "q_scale",
            "mu_scale",
            "theta_scale",
            "kappa_scale",
            "alpha_scale",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.reference_energies_eV is not None and len(
            self.reference_energies_eV
        ) != len(self.species):
            raise ValueError(
                "reference_energies_eV must have one entry per species "
                f"({len(self.species)}), got {len(self.reference_energies_eV)}"
            )

    @property
    def use_q(self) -> bool:
        """Whether the latent charge head exists."""
        return VARIANTS[self.variant][0]

    @property
    def use_mu(self) -> bool:
        """Whether the latent dipole head exists."""
        return VARIANTS[self.variant][1]

    @property
    def use_theta(self) -> bool:
        """Whether the latent quadrupole head exists."""
        return VARIANTS[self.variant][2]

    @property
    def use_kappa(self) -> bool:
        """Whether the softness head (induced charges dq) exists."""
        return VARIANTS[self.variant][3]

    @property
    def use_alpha(self) -> bool:
        """Whether the polarizability head (induced dipoles dmu) exists."""
        return VARIANTS[self.variant][4]

    @property
    def num_species(self) -> int:
        """Number of real species (indices 1..num_species; 0 is padding)."""
        return len(self.species)

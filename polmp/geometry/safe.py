"""Norms and divisions that stay finite to second order at the singular point.

Padded edges have length exactly zero (self-edges of a padding atom, see
``polmp.geometry.graph``), and observables such as Born charges and polarizabilities
take second derivatives of the energy.  ``jnp.linalg.norm`` has a NaN gradient at
x = 0 (0/0 in d|x|/dx = x/|x|), and even a masked result ``where(mask, f(r), 0)``
back-propagates NaN, because the cotangent of the unselected branch is multiplied by
an infinite derivative (0 * inf = NaN).

The cure is the double-``where`` pattern (jax-md ``safe_mask``, e3x ``ops/safe.py``):
first replace the singular *input* by a harmless value, then select the result.  Both
branches are then finite, and so are all their derivatives.
"""

from __future__ import annotations

import jax.numpy as jnp


def safe_norm(x, axis=-1, eps=0.0, keepdims=False):
    """Euclidean norm whose value, gradient and Hessian are finite at x = 0.

    For ``|x|^2 > eps^2`` the result is ``|x|`` with its exact derivatives; otherwise
    it is exactly 0 with zero derivatives (the double-``where`` pattern: the square
    root only ever sees a positive argument).

    Args:
        x: Float[Array, '... 3'] (any trailing size), e.g. edge vectors in A.
        axis: the axis reduced over.
        eps: norms at or below this (same unit as ``x``) are returned as exactly 0.
            The default 0 only catches exact zeros, which is what padded edges give.
        keepdims: keep the reduced axis with size 1.

    Returns:
        Float[Array, '...'], same unit and dtype as ``x``.
    """
    x = jnp.asarray(x)
    squared = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    is_large = squared > eps * eps
    # Inner where: sqrt never sees 0, so its derivative (1/2 sqrt) stays finite in
    # the branch that the outer where throws away.
    safe_squared = jnp.where(is_large, squared, jnp.ones_like(squared))
    return jnp.where(is_large, jnp.sqrt(safe_squared), jnp.zeros_like(squared))


def safe_divide(numerator, denominator, fill_value=0.0):
    """``numerator / denominator`` with ``fill_value`` where the denominator is 0.

    Derivatives of all orders are finite everywhere (double-``where``): the
    division only ever sees a non-zero denominator.

    Args:
        numerator: Float[Array, '...'].
        denominator: Float[Array, '...'], broadcastable against ``numerator``.
        fill_value: the result where ``denominator == 0`` (its derivative is 0).

    Returns:
        Float[Array, '...'] of the broadcast shape.
    """
    numerator = jnp.asarray(numerator)
    denominator = jnp.asarray(denominator)
    nonzero = denominator != 0
    safe_denominator = jnp.where(nonzero, denominator, jnp.ones_like(denominator))
    quotient = numerator / safe_denominator
    return jnp.where(nonzero, quotient, jnp.asarray(fill_value, quotient.dtype))

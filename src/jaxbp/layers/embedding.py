"""Embedding: a lookup table; the layer whose input is integers and so has no cotangent."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp._types import Array, Params, PRNGKey, Shape
from jaxbp.protocols import Layer


@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    r"""Embedding: y[...] = table[ids[...]]; dtable[i] = sum of dy over the positions where
    ids == i.

    ids: integer (batch, ...) -> y: (batch, ..., features). Residuals: ids (batch, ...).
    dx is float0 zeros of ids' shape: integers have no cotangent (JAX's convention).
    An out-of-range id (negative ones included) gives a NaN row under jit and adds nothing to
    dtable, never a silently clamped or wrapped row; eagerly, check_ids(ids) names it.
    The table starts standard normal, so each row feeds the next layer unit-variance inputs, what
    Dense's LeCun init assumes (PyTorch's choice too).

    **Forward.** A row lookup: for every position $n$ (the batch's and any others),

    $$
    y_n = E_{\mathrm{ids}_n}
    $$

    $E$ = `table`, `(num_embeddings, features)`.

    **Backward.** Each row of the table gets the sum of the $\mathrm{d}y$ of the positions that read
    it (a scatter-add); the integer ids get no cotangent:

    $$
    \mathrm{d}E_v = \sum_{n:\ \mathrm{ids}_n = v} \mathrm{d}y_n, \qquad
    \mathrm{d}\,\mathrm{ids} = \text{float0 zeros}
    $$

    A row no id reads gets 0; an out-of-range id contributes nothing.

    **Shapes.** ids: integer `(batch, ...)`; $y$: `(batch, ..., features)`.

    **Residuals.** The ids.
    """

    num_embeddings: int
    features: int
    examples_independent = True  # row i's vectors are looked up from row i's ids

    def __post_init__(self):
        for name in ("num_embeddings", "features"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Embedding: {name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"Embedding: {name} must be positive, got {value}")

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]:
        """input_shape: the per-example ids' shape, e.g. (T,) or ()."""
        table = jax.random.normal(key, (self.num_embeddings, self.features))
        return (*input_shape, self.features), {"table": table}

    def forward(self, params, ids, *, key=None):
        self._check(params, ids)
        rows = jnp.take(params["table"], ids, axis=0, mode="fill", fill_value=jnp.nan)
        # take wraps a negative id (-1 is the last row); mark those rows out of range too.
        return jnp.where((ids >= 0)[..., None], rows, jnp.nan), ids

    def backward(self, params, ids, dy):
        dy = jnp.where((ids >= 0)[..., None], dy, 0).astype(params["table"].dtype)
        dtable = jnp.zeros_like(params["table"]).at[ids].add(dy, mode="drop")
        return {"table": dtable}, np.zeros(ids.shape, dtype=jax.dtypes.float0)

    # Optional per-example rules (jaxbp.quantities): backward's scatter, the batch axis kept.
    def per_example_grads(self, params, ids, dy):
        """dtable_i[v] = sum of dy_i over example i's positions with id v: (batch, vocab, F)."""
        ids, dy = _per_example_rows(self, ids, dy, params["table"].dtype)
        rows = jnp.arange(ids.shape[0])[:, None]
        dtable = jnp.zeros((ids.shape[0], *params["table"].shape), dy.dtype)
        return {"table": dtable.at[rows, ids].add(dy, mode="drop")}

    def per_example_sq_norms(self, params, ids, dy):
        """||dtable_i||^2 = sum_{t,s: id_t = id_s} dy_t.dy_s (a ghost norm, (T, T) per example)
        when T^2 < vocab, else from dtable_i: (batch,)."""
        ids, dy = _per_example_rows(self, ids, dy, params["table"].dtype)
        if ids.shape[1] ** 2 >= self.num_embeddings:
            return jnp.sum(jnp.square(self.per_example_grads(params, ids, dy)["table"]), (1, 2))
        same = (ids[:, :, None] == ids[:, None, :]) & (ids < self.num_embeddings)[:, :, None]
        return jnp.sum(same * jnp.einsum("btf,bsf->bts", dy, dy), axis=(1, 2))

    def check_ids(self, ids: Array) -> None:
        """Raise, eagerly, when an id lies outside 0..num_embeddings-1 (forward gives NaN rows)."""
        ids = np.asarray(ids)
        self._check_dtype(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(
                f"{self!r}: ids must lie in 0..{self.num_embeddings - 1}; found smallest "
                f"{ids.min()}, largest {ids.max()}"
            )

    def _check(self, params: Params, ids: Array) -> None:
        """Raise at trace time when ids or params cannot be this layer's."""
        if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
            raise TypeError(f"{self!r}: ids must be an array, got {type(ids).__name__}")
        self._check_dtype(ids)
        if ids.ndim < 1:
            raise ValueError(f"{self!r}: ids need a batch axis, got shape {tuple(ids.shape)}")
        want = (self.num_embeddings, self.features)
        if not isinstance(params, Mapping):
            got = type(params).__name__
        elif set(params) != {"table"} or getattr(params["table"], "shape", None) != want:
            got = ", ".join(
                f"{k!r}: {getattr(v, 'shape', type(v).__name__)}" for k, v in params.items()
            )
            got = "{" + got + "}"
        else:
            return
        raise ValueError(f"{self!r}: params must be {{'table': {want}}}, got {got}")

    def _check_dtype(self, ids: Array) -> None:
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{self!r}: ids must be integers, got dtype {ids.dtype}")


def _per_example_rows(layer: Embedding, ids: Array, dy: Array, dtype) -> tuple[Array, Array]:
    """ids (batch, T) and dy (batch, T, F), every position of an example on one axis; a negative
    id's dy zeroed, as backward drops it."""
    ids = ids.reshape(ids.shape[0], -1)
    dy = dy.reshape(*ids.shape, layer.features)
    return ids, jnp.where((ids >= 0)[..., None], dy, 0).astype(dtype)

"""Optimisers that need more than the gradient. K-FAC (Martens and Grosse 2015): an optimiser
that preconditions each layer's gradient by the inverse of its Kronecker-factored curvature, the
factors coming from the same backward sweep as the gradient (`jaxbp.quantities.kfac_factors`).

For a layer with a K-FAC rule (Dense; Conv with groups=1), theta = [W.reshape(-1, features); b]
and its block of the curvature is approximated as A (x) G (A: the inputs' second moment, with a
one for the bias; G: that of the deltas the loss Hessian's columns send to the layer). Each step:

    A_t, G_t = running averages of the batch's factors (decay d, corrected for its start:
               A_t = (d w A_{t-1} + (1 - d) A_batch) / (d w + 1 - d), w the weight so far)
    every k steps: pi = sqrt((tr A / dim A) / (tr G / dim G))                 (pi-adjusted
               A^-1 <- (A + pi sqrt(lambda) I)^-1,  G^-1 <- (G + sqrt(lambda) / pi I)^-1   damping)
    p = A^-1 grad_theta G^-1                     (= (A (x) G)^-1 grad, with damping factored)
    delta_t = -lr_t p + mu delta_{t-1};  theta <- theta + delta_t

Layers with params and no K-FAC rule (LayerNorm, Embedding, a grouped Conv) are not
preconditioned: their p is their gradient (the identity), with the same learning rate and
momentum. G comes from `samples` Monte Carlo columns of the loss Hessian (labels drawn from the
model's own prediction: the Fisher, one extra backward sweep each; the default, 1, is kfac-jax's
"fisher_gradients"), or from every exact column with samples=None (the GGN; k sweeps for k
outputs). The draws' key lives in the optimiser's state, so a resumed run draws the same.

`kfac(model, learning_rate, ...)` returns a `KFAC`: an optax-style transformation (init,
update) whose update needs the batch's factors, and whose `gradients` method computes the value,
the gradient and the factors in one recorded sweep. `fit`, `make_step` and `make_epoch` call it
in place of the engine when the optimiser has one, so `fit(..., optimizer=kfac(model, 0.1))`
trains with it and checkpoints its state (factors, inverses, momentum, draws) like any other.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp._types import Array, Grads, Params, PRNGKey
from jaxbp.protocols import State
from jaxbp.quantities._leaves import check_supported, record
from jaxbp.quantities.curvature import factors_of
from jaxbp.walk import Path, disjoint, leaves, params_at, path_str

__all__ = ["kfac", "KFAC", "KFACState", "damped_inverses"]


class KFACState(NamedTuple):
    """K-FAC's whole state, one pytree (checkpointed like any optimiser's).

    count: steps taken. factors / inverses: {layer path string: {"A", "G"}}, the running
    averages and the damped inverses last computed. weight: the running averages' total weight
    (0 before the first step). velocity: the last step's update (momentum). key: the raw key
    the Monte Carlo columns are drawn from (step t draws from fold_in(key, t)).
    """

    count: Array
    factors: dict
    weight: Array
    inverses: dict
    velocity: Params
    key: Array


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, like a function
class KFAC:
    """K-FAC for one model; build it with `kfac(model, learning_rate, ...)`."""

    model: Any = dataclasses.field(repr=False)
    learning_rate: float | Callable[[Array], Array]
    damping: float = 0.1
    momentum: float = 0.9
    decay: float = 0.95
    inverse_every: int = 5
    samples: int | None = 1
    seed: int = 0
    paths: tuple[Path, ...] = dataclasses.field(default=(), repr=False)

    def __repr__(self) -> str:
        lr = self.learning_rate
        lr = f"{lr:g}" if isinstance(lr, numbers.Real) else getattr(lr, "__name__", "schedule")
        return (
            f"kfac(learning_rate={lr}, damping={self.damping:g}, momentum={self.momentum:g}, "
            f"decay={self.decay:g}, inverse_every={self.inverse_every}, samples={self.samples})"
        )

    # -----------------------------------------------------------------------------------------
    # optax's interface

    def init(self, params: Params) -> KFACState:
        """Zero factors (weight 0), identity inverses, zero velocity; the draws' key from seed.
        params must be the model's: each preconditioned layer's W (and b) is read for the
        factors' sizes."""
        factors, inverses = {}, {}
        for path in self.paths:
            a, g = self._sizes(params, path)
            dtype = params_at(params, path)["W"].dtype
            factors[path_str(path)] = {"A": jnp.zeros((a, a), dtype), "G": jnp.zeros((g, g), dtype)}
            inverses[path_str(path)] = {"A": jnp.eye(a, dtype=dtype), "G": jnp.eye(g, dtype=dtype)}
        return KFACState(
            count=jnp.zeros((), jnp.int32),
            factors=factors,
            weight=jnp.zeros((), _float_dtype(params)),
            inverses=inverses,
            velocity=jax.tree.map(jnp.zeros_like, params),
            key=jax.random.key_data(jax.random.PRNGKey(self.seed)),
        )

    def update(
        self, grads: Grads, state: KFACState, params: Params | None = None, *,
        factors: dict | None = None, **extra: Any,
    ) -> tuple[Params, KFACState]:  # fmt: skip
        """(updates, new state) from the gradient and this batch's factors ({layer path string:
        {"A", "G"}}, as `gradients` returns them in its extra dict). Other extra arguments
        (optax.chain passes its own on) are ignored."""
        del params, extra
        if factors is None:
            raise ValueError(
                f"{self!r}: update needs this batch's K-FAC factors (factors=...); fit, make_step "
                "and make_epoch compute them with the gradient (KFAC.gradients)"
            )
        _check_factors(state.factors, factors)
        decay = jnp.asarray(self.decay, state.weight.dtype)
        weight = decay * state.weight + (1 - decay)
        averaged = jax.tree.map(
            lambda old, new: (decay * state.weight * old + (1 - decay) * new) / weight,
            state.factors,
            factors,
        )
        inverses = lax.cond(
            state.count % self.inverse_every == 0,
            lambda f: {
                p: dict(zip("AG", damped_inverses(v["A"], v["G"], self.damping)))
                for p, v in f.items()
            },  # fmt: skip
            lambda f: state.inverses,
            averaged,
        )
        directions = self._precondition(grads, inverses)
        lr = self.learning_rate(state.count) if callable(self.learning_rate) else self.learning_rate
        updates = jax.tree.map(
            lambda p, v: (-lr * p + self.momentum * v).astype(p.dtype), directions, state.velocity
        )
        new_state = KFACState(state.count + 1, averaged, weight, inverses, updates, state.key)
        return updates, new_state

    # -----------------------------------------------------------------------------------------
    # The gradient and the factors, in one sweep

    def gradients(
        self, model: Any, loss: Any, params: Params, x: Array, y: Array, *, opt_state: KFACState,
        key: PRNGKey | None = None, state: State = None,
    ) -> tuple[Array, Grads, State, dict]:  # fmt: skip
        """(value, grads, new state, {"factors": ...}): backprop's forward and backward once,
        recorded, then the factors of every preconditioned layer from that recording (one more
        backward sweep per Monte Carlo column). The extra dict is update's keyword arguments."""
        if model is not self.model:
            raise ValueError(
                f"{self!r} was built for another model: build it with kfac(model, ...) for the "
                "model it trains"
            )
        rec = record(model, loss, params, x, y, key=key, state=state)
        draw = None
        if self.samples is not None:
            draw = jax.random.fold_in(opt_state.key, opt_state.count)
        with jax.named_scope("kfac factors"):
            by_path = factors_of(model, loss, params, y, rec, draw, self.samples, paths=self.paths)
        factors = {path_str(p): f for p, f in by_path.items()}
        return rec.value, rec.grads, rec.state, {"factors": factors}

    # -----------------------------------------------------------------------------------------

    def _sizes(self, params: Params, path: Path) -> tuple[int, int]:
        """(dim A, dim G) of the layer at path, from its params: W (..., features), b."""
        try:
            own = params_at(params, path)
            W = own["W"]
        except (IndexError, KeyError, TypeError):
            raise ValueError(
                f"{self!r}: params have no W at {path_str(path)}, where the model has "
                f"{dict(leaves(self.model))[path]!r}: pass the model's own params"
            ) from None
        features = W.shape[-1]
        return W.size // features + ("b" in own), features

    def _precondition(self, grads: Grads, inverses: dict) -> Grads:
        """A^-1 [dW; db] G^-1 at every preconditioned layer; every other gradient as it is."""
        out = grads
        for path in self.paths:
            g = params_at(grads, path)
            inv = inverses[path_str(path)]
            W = g["W"]
            theta = W.reshape(-1, W.shape[-1])
            if "b" in g:
                theta = jnp.concatenate([theta, g["b"][None]], axis=0)
            p = inv["A"] @ theta @ inv["G"]
            new = dict(g, W=p[: theta.shape[0] - ("b" in g)].reshape(W.shape))
            if "b" in g:
                new["b"] = p[-1]
            out = _replace(out, path, new)
        return out


def kfac(
    model: Any, learning_rate: float | Callable[[Array], Array], *, damping: float = 0.1,
    momentum: float = 0.9, decay: float = 0.95, inverse_every: int = 5, samples: int | None = 1,
    seed: int = 0,
) -> KFAC:  # fmt: skip
    """A K-FAC optimiser for `model` (module docstring): fit(model, loss, params, data,
    optimizer=kfac(model, 0.1), ...).

    learning_rate: a float or an optax schedule of the step count. damping: lambda, the
    Tikhonov damping, split between the factors by pi. momentum: mu, on the previous update.
    decay: the factors' running average keeps this much of the old each step. inverse_every:
    k, the inverses are recomputed on steps 0, k, 2k, ... samples: Monte Carlo columns per step
    for G (the Fisher), or None for the exact GGN's. seed: the draws' key.

    Every layer must keep its examples independent and own its params (no Tied, no BatchNorm
    in training): checked here, naming the layer.
    """
    _check_number("learning_rate", learning_rate, callable_ok=True)
    _check_number("damping", damping, positive=True)
    _check_number("momentum", momentum, below_one=True)
    _check_number("decay", decay, below_one=True)
    for name, value in (("inverse_every", inverse_every), ("seed", seed)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"kfac: {name} must be an int, got {value!r}")
    if inverse_every < 1:
        raise ValueError(f"kfac: inverse_every must be at least 1, got {inverse_every}")
    if samples is not None and (
        not isinstance(samples, numbers.Integral) or isinstance(samples, bool) or samples < 1
    ):
        raise ValueError(f"kfac: samples must be a positive int or None (exact), got {samples!r}")
    check_supported(model, "K-FAC's factors")
    if not disjoint(model):
        raise NotImplementedError(
            f"kfac: the model {type(model).__name__} shares or transforms params between layers "
            "(a combinator that does not declare params_disjoint: Tied, say), so a layer's "
            "factors would not be those of its params"
        )
    paths = tuple(path for path, layer in leaves(model) if _has_rule(layer))
    return KFAC(
        model, learning_rate, float(damping), float(momentum), float(decay), int(inverse_every),
        None if samples is None else int(samples), int(seed), paths,
    )  # fmt: skip


def damped_inverses(A: Array, G: Array, damping: float) -> tuple[Array, Array]:
    """((A + pi sqrt(lambda) I)^-1, (G + sqrt(lambda) / pi I)^-1), pi = sqrt((tr A / dim A) /
    (tr G / dim G)) (Martens and Grosse 2015, section 6.3): the damping split so that both
    factors are damped in proportion to their scale; their Kronecker product is kfac-jax's
    (which splits the same product differently, by a scalar). Where either trace is 0 (a layer
    whose deltas are all 0: a dead ReLU's) the block A (x) G is 0 and only the damping is left:
    both are (sqrt(lambda) I)^-1, as in kfac-jax. By Cholesky: both are symmetric positive
    definite."""
    mean_a = jnp.trace(A) / A.shape[0]
    mean_g = jnp.trace(G) / G.shape[0]
    root = jnp.sqrt(jnp.asarray(damping, A.dtype))
    zero = (mean_a <= 0) | (mean_g <= 0)
    pi = jnp.sqrt(jnp.where(zero, 1, mean_a) / jnp.where(zero, 1, mean_g))
    keep = jnp.where(zero, 0, 1).astype(A.dtype)  # the factors themselves, or nothing
    return (
        _inverse_psd(keep * A + pi * root * jnp.eye(len(A), dtype=A.dtype)),
        _inverse_psd(keep * G + root / pi * jnp.eye(len(G), dtype=G.dtype)),
    )


def _inverse_psd(M: Array) -> Array:
    """M^-1 by Cholesky, made exactly symmetric: (X + X^T) / 2. That pass also hands the inverse
    back row-major; LAPACK's solve writes it column-major, and XLA:CPU then kept the inverses in
    the state that way and transposed every one of them on every step, refresh or not."""
    factor = jax.scipy.linalg.cho_factor(M, lower=True)
    inverse = jax.scipy.linalg.cho_solve(factor, jnp.eye(len(M), dtype=M.dtype))
    return (inverse + inverse.T) / 2


def _has_rule(layer: Any) -> bool:
    """A layer K-FAC preconditions: it has kfac_rows, and (a Conv) one group."""
    return callable(getattr(layer, "kfac_rows", None)) and getattr(layer, "groups", 1) == 1


def _replace(tree: Any, path: Path, value: Any) -> Any:
    """tree with the subtree at path (tuple and list and dict steps) replaced by value."""
    if not path:
        return value
    step, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, step: _replace(tree[step], rest, value)}
    items = list(tree)
    items[step] = _replace(items[step], rest, value)
    return type(tree)(items) if isinstance(tree, tuple) else items


def _check_factors(running: dict, batch: dict) -> None:
    if set(running) != set(batch) or any(
        jnp.shape(batch[p][f]) != jnp.shape(running[p][f]) for p in running for f in "AG"
    ):
        shapes = {p: {f: jnp.shape(v) for f, v in d.items()} for p, d in batch.items()}
        expected = {p: {f: jnp.shape(v) for f, v in d.items()} for p, d in running.items()}
        raise ValueError(f"K-FAC factors {shapes} do not match the state's {expected}")


def _float_dtype(params: Params):
    floats = [p.dtype for p in jax.tree.leaves(params) if jnp.issubdtype(p.dtype, jnp.floating)]
    return jnp.result_type(*floats) if floats else jnp.float32


def _check_number(name: str, value, *, callable_ok=False, positive=False, below_one=False):
    if callable_ok and callable(value):
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"kfac: {name} must be a number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"kfac: {name} must be positive, got {value}")
    if below_one and not 0 <= value < 1:
        raise ValueError(f"kfac: {name} must be in [0, 1), got {value}")
    if not positive and not below_one and not value > 0:
        raise ValueError(f"kfac: {name} must be positive, got {value}")

"""The protocols, stated once: Layer, Combinator, Loss and Engine, with every optional member.

Any object with a protocol's methods is one (duck typing; `isinstance(obj, Layer)` checks the
methods). The library's own classes subclass these protocols explicitly, which gives them the
default `apply`. No rule calls jax.grad, jax.vjp or jax.jacobian: jax.grad is the referee.

Layer (required)
    init(key, input_shape) -> (output_shape, params)
        Shapes per example (no batch axis), tuples of ints; params a pytree of arrays, () if none.
    forward(params, x, *, key=None) -> (y, residuals)
        x: (batch, *input_shape); residuals: exactly what backward needs; key feeds stochastic
        layers (Dropout raises without one in training) and is ignored by the rest.
    backward(params, residuals, dy) -> (dparams, dx)
        The hand-written VJP: dparams has params' structure, shapes and dtypes; dx those of x
        (float0 for integer inputs, JAX's convention, where a sweep stops).
    apply(params, x, *, key=None) -> y = forward(...)[0]

Layer (optional: what a layer knows about itself; each default is the safe one)
    init_state(params) -> state; forward_state(params, state, x, *, key=None) -> (y, residuals,
        new_state): state the layer updates in training and reads in evaluation (BatchNorm's
        running statistics), never in params. Default: () and forward with state unchanged.
    train: bool
        A field of layers that behave differently in training and evaluation; `eval_mode(model)`
        sets it False everywhere; nothing switches mode implicitly.
    examples_independent: bool
        True when example i's output reads example i's input alone (in this mode), so its
        gradient splits per example. Per-example quantities, the diagonal GGN, K-FAC and DP-SGD
        need it of every leaf. Default False: such a layer is refused, naming its path.
    per_example_grads(params, residuals, dy) -> dparams, each leaf (batch, *leaf.shape)
    per_example_sq_norms(params, residuals, dy) -> (batch,)
    sum_grad_squared(params, residuals, dy) -> sum_i (per-example dparams)^2, params' shapes
    weighted_grad(params, residuals, dy, w) -> sum_i w_i (per-example dparams), params' shapes
        Faster per-example rules; without them an exact generic one runs, for layers whose
        examples are independent: the layer's own backward on its recorded residuals, with dy
        kept at one example at a time.
    recompute_per_example: bool
        True when forward on one example's rows gives exactly that example's rows of the
        batch's forward (no key, no state): the generic rule may then recompute each example's
        forward and backward alone, which costs less than a backward per example. Default False.
    kfac_rows(x) -> a: (rows, fan_in + 1), or (rows, fan_in) for a layer without a bias
        K-FAC's input rows [x, 1], one per example and position, such that each output row is
        a @ [W.reshape(-1, features); b] (a @ W.reshape(-1, features) without a bias).
        Without it, kfac_factors refuses the layer (or, when asked explicitly, leaves it out).
    selects: bool
        True when the rule picks among inputs (a maximum, a kink at 0), so that ties decide
        where the gradient goes: the checker then also draws inputs with ties. Default False.
    check_ids(ids)
        For layers of integer inputs: raises ValueError on ids out of range (values known).

Combinator: a Layer that holds other layers
    sublayers() -> ((step, child), ...): each child's step, a tuple of ints added to the
        combinator's path. Steps are distinct and none is a prefix of another; the step () (the
        child sits at the combinator's own path, as Residual's and Tied's body) is an only child.
    with_sublayers(children) -> the same combinator around other children.
    walk_forward(params, state, x, key, path, sweep), walk_backward(params, residuals, dy, path,
        sweep): forward and backward that reach each child through `jaxbp.walk.sweep_forward`
        and `sweep_backward` at path + step (see jaxbp.walk).
    params_disjoint: bool
        True when each child reads exactly its own subtree of the params and nothing else reads
        or changes it (the combinator has no params of its own, and passes each child's
        gradient up as it is: Serial, Residual, Parallel), so per-example gradient norms add
        over the leaves. False, or missing, means the params are shared, transformed or read
        besides (Tied): quantities take the exact route. The quantities check the claim on the
        arrays each leaf reads and returns; one they contradict raises.

Addresses: a path names exactly one leaf layer (one that is not a combinator), by its place in
the params tree: (3, 0, 1) is `params[3][0][1]`. Combinators are not addressed (Residual and Tied
add no step: their body's leaves keep the paths they would have without them). Signals,
replacement rules, check rows, quantities and error messages all use these paths.

Loss (required)
    forward(y_pred, y) -> (value, residuals): value is C, the mean over the batch of L_i.
    backward(residuals, g=1.0) -> g * dC/dy_pred, y_pred's shape and dtype.
    apply(y_pred, y) -> value = forward(...)[0]
Loss (optional)
    hessian_sqrt(y_pred, y), hessian_sqrt_sample(y_pred, y, key): curvature (jaxbp.losses).
    targets: str
        How the checker draws targets: "normal", "unit" (in [0, 1]), "labels" (integer classes
        over the last axis) or "probs" (rows that sum to 1). Default "normal".
    scorer(y) -> None or accuracy(y_pred, y) -> fraction right
        Whether these targets (NumPy, values known) have a right or wrong answer, and how to
        count it. Default: None (no accuracy).

Engine: how a gradient is made, backprop's signature and result
    engine(model, loss, params, x, y, *, key=None, state=None) -> (value, grads), or with
    state=... (value, grads, new_state). backprop, autodiff, feedback engines and DP-SGD are
    engines; fit takes any of them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from jaxbp._types import Array, Grads, Params, PRNGKey, Residuals, Shape

__all__ = [
    "Layer", "Combinator", "Loss", "Engine", "State", "is_combinator",
    "forward_state", "examples_independent", "params_disjoint",
]  # fmt: skip

State = Any  # a pytree beside params: one entry per child, () for stateless layers
"""A model's state (BatchNorm's running statistics): a pytree beside params, one entry per
child, `()` for a stateless layer."""


@runtime_checkable
class Layer(Protocol):
    """A layer: init, forward, backward (its hand-written VJP) and apply (the module docstring
    lists the optional members)."""

    def init(self, key: PRNGKey, input_shape: Shape) -> tuple[Shape, Params]: ...

    def forward(
        self, params: Params, x: Array, *, key: PRNGKey | None = None
    ) -> tuple[Array, Residuals]: ...

    def backward(self, params: Params, residuals: Residuals, dy: Array) -> tuple[Grads, Array]: ...

    def apply(self, params: Params, x: Array, *, key: PRNGKey | None = None) -> Array:
        return self.forward(params, x, key=key)[0]


@runtime_checkable
class Combinator(Layer, Protocol):
    """A layer that holds layers, reached by path (see the module docstring)."""

    def sublayers(self) -> tuple[tuple[tuple[int, ...], Any], ...]: ...

    def with_sublayers(self, layers: tuple) -> Combinator: ...

    def walk_forward(
        self, params: Params, state: State | None, x: Array, key: PRNGKey | None,
        path: tuple[int, ...], sweep: Any,
    ) -> tuple[Array, Residuals, State | None]: ...  # fmt: skip

    def walk_backward(
        self, params: Params, residuals: Residuals, dy: Array, path: tuple[int, ...], sweep: Any
    ) -> tuple[Grads, Array]: ...


@runtime_checkable
class Loss(Protocol):
    """A loss: forward (C, the batch mean of L_i), backward (g dC/dy_pred) and apply."""

    def forward(self, y_pred: Array, y: Array) -> tuple[Array, Residuals]: ...

    def backward(self, residuals: Residuals, g: Array | float = 1.0) -> Array: ...

    def apply(self, y_pred: Array, y: Array) -> Array:
        return self.forward(y_pred, y)[0]


@runtime_checkable
class Engine(Protocol):
    """A gradient engine: (value, grads), or (value, grads, new_state) when given state=...."""

    def __call__(
        self, model: Layer, loss: Loss, params: Params, x: Array, y: Array, *,
        key: PRNGKey | None = None, state: State = None,
    ) -> tuple: ...  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The optional members' defaults, each read in one place


def is_combinator(layer: Any) -> bool:
    """Combinators hold other layers (`sublayers()`) and sweep through them by path."""
    return callable(getattr(layer, "sublayers", None))


def forward_state(
    layer: Any, params: Params, state: State, x: Array, *, key: PRNGKey | None = None
) -> tuple[Array, Residuals, State]:
    """layer.forward_state(...), or forward(...) with the state passed through unchanged."""
    method = getattr(layer, "forward_state", None)
    if method is not None:
        return method(params, state, x, key=key)
    y, residuals = layer.forward(params, x, key=key)
    return y, residuals, state


def examples_independent(layer: Any) -> bool:
    """Whether the layer declares that its examples never meet (default: no)."""
    return getattr(layer, "examples_independent", False) is True


def params_disjoint(combinator: Any) -> bool:
    """Whether the combinator declares that each child reads its own params (default: no)."""
    return getattr(combinator, "params_disjoint", False) is True

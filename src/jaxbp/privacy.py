"""Privacy accounting for DP-SGD, by Google's dp-accounting (no accountant is written here).

DP-SGD with Poisson sampling (each example joins a step independently with probability q) and
Gaussian noise of standard deviation sigma * C on a sum of gradients clipped to norm C is, for
one step, the event PoissonSampledDpEvent(q, GaussianDpEvent(sigma)); T steps compose it T
times. `epsilon` asks the accountant for the epsilon that holds at a given delta, under
add-or-remove-one neighbouring datasets (the relation Poisson sampling's analysis uses).

The RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019) is the default: it takes
milliseconds, so a run can report epsilon every epoch; the PLD accountant (privacy loss
distributions) gives a tighter epsilon in about a second. dp-accounting is an optional
dependency: `pip install "jaxbp[dp]"`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from typing import Any

__all__ = ["epsilon", "dp_event", "require_dp_accounting", "INSTALL_HINT"]

INSTALL_HINT = 'privacy accounting needs dp-accounting: pip install "jaxbp[dp]"'
"""What the ImportError says when dp-accounting is missing."""
ACCOUNTANTS = ("rdp", "pld")


def require_dp_accounting() -> Any:
    """The dp_accounting module, or ImportError saying how to install it."""
    try:
        import dp_accounting
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return dp_accounting


def dp_event(steps: int, sampling_rate: float, noise_multiplier: float) -> Any:
    """T = steps Poisson-sampled Gaussian steps: SelfComposedDpEvent(PoissonSampledDpEvent(q,
    GaussianDpEvent(sigma)), T)."""
    dpa = require_dp_accounting()
    step = dpa.PoissonSampledDpEvent(sampling_rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(step, steps)


def epsilon(
    steps: int,
    sampling_rate: float,
    noise_multiplier: float,
    delta: float,
    *,
    accountant: str = "rdp",
) -> float:
    """The epsilon of `steps` DP-SGD steps at `delta`: (epsilon, delta)-DP.

    sampling_rate q: each example's probability of joining a step (expected batch / n);
    noise_multiplier sigma: the noise's standard deviation over the clip norm. No noise
    (sigma = 0) with q > 0 is no privacy: math.inf; no step (steps = 0) spends none: 0.0.
    """
    _check(steps, sampling_rate, noise_multiplier, delta, accountant)
    if steps == 0 or sampling_rate == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    dpa = require_dp_accounting()
    if accountant == "rdp":
        account = dpa.rdp.RdpAccountant()
    else:
        account = dpa.pld.PLDAccountant()
    with _quiet("absl"):  # RDP orders whose series do not converge are dropped, with a warning
        account.compose(dp_event(int(steps), float(sampling_rate), float(noise_multiplier)))
        return float(account.get_epsilon(float(delta)))


@contextlib.contextmanager
def _quiet(name: str):
    """Warnings of the logger `name` off for the block: the result stays a valid bound."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(steps, q, sigma, delta, accountant) -> None:
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    for name, value, ok, bound in (
        ("sampling_rate", q, lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("noise_multiplier", sigma, lambda v: v >= 0, ">= 0"),
        ("delta", delta, lambda v: 0 < v < 1, "in (0, 1)"),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{name} must be finite and {bound}, got {value}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; valid: {', '.join(ACCOUNTANTS)}")

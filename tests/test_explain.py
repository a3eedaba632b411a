"""The seed's worked example against numbers computed by hand, and `jaxbp explain`'s output."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from jaxbp.cli import main
from jaxbp.explain import chain_factors, seed_params, xor_data

# All weights zero but v1 = 1: o1 = o2 = 1/2, z_B = 1/2, y' = sigmoid(1/2) for every example.
WEIGHTS = [0, 0, 0, 0, 0, 0, 1, 0, 0]


def _by_hand():
    y_hat = 1 / (1 + math.exp(-0.5))
    targets = [0, 1, 1, 0]
    dL_dyhat = [y_hat - t for t in targets]  # (y' - y), not (y - y')
    fB = y_hat * (1 - y_hat)
    dv1 = sum(d * fB * 0.5 for d in dL_dyhat) / 4
    # w11: x1 is 1 only for examples 3 and 4; f_1'(z_1) = 1/4 at z_1 = 0; v1 = 1.
    dw11 = sum(dL_dyhat[i] * fB * 1.0 * 0.25 * x1 for i, x1 in enumerate([0, 0, 1, 1])) / 4
    return y_hat, dL_dyhat, fB, dv1, dw11


def test_factors_match_hand_computation(x64):
    params = seed_params(weights=WEIGHTS, dtype=jnp.float64)
    f = chain_factors(params, *xor_data(jnp.float64))
    y_hat, dL_dyhat, fB, dv1, dw11 = _by_hand()
    assert f["y_hat"].tolist() == pytest.approx([y_hat] * 4, rel=1e-15)
    assert f["dL_dyhat"].tolist() == pytest.approx(dL_dyhat, rel=1e-15)
    assert f["fB_prime"].tolist() == pytest.approx([fB] * 4, rel=1e-15)
    assert f["dzB_dv1"].tolist() == pytest.approx([0.5] * 4, rel=1e-15)
    assert float(f["dL_dv1"].mean()) == pytest.approx(dv1, rel=1e-14)
    assert float(f["dL_dw11"].mean()) == pytest.approx(dw11, rel=1e-14)


def test_explain_prints_every_factor_and_agrees_with_jax_grad(capsys):
    assert main(["explain", "--weights", *map(str, WEIGHTS)]) == 0
    out = capsys.readouterr().out
    _, _, _, dv1, dw11 = _by_hand()
    assert f"dC/dv1 = mean = {dv1:+.10f}" in out
    assert f"dC/dw11 = mean = {dw11:+.10f}" in out
    assert "y' - y" in out and "drops that minus sign" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["v1"], ["w11"])]
    for name, by_hand, bp, grad, err in rows:
        assert float(bp) == pytest.approx(float(grad), rel=1e-12), name
        assert float(by_hand) == pytest.approx(float(bp), rel=1e-12), name
        assert float(err) <= 1e-12


def test_explain_with_a_seed_matches_jax_grad(capsys):
    assert main(["explain", "--seed", "3"]) == 0
    table = capsys.readouterr().out.split("Every weight")[1].splitlines()[2:]
    assert len(table) == 9
    assert all(float(row.split()[-1]) <= 1e-12 for row in table)


def test_explain_rejects_a_wrong_number_of_weights(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--weights", "1", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--weights" in err

"""Time a DP-SGD gradient against a plain backprop gradient, side by side in one process.

    python benchmarks/dp_sgd_step.py [--configs digits wide] [--seconds 6] [--out FILE.json]

Per config of `jaxbp bench` (an MLP and its batch), interleaved, each jitted, one batch:
  backprop     jaxbp.backprop: the plain gradient, the baseline of every ratio
  dp_clip      jaxbp's DP-SGD with noise multiplier 0: the norms and the clipping alone
  dp           jaxbp's DP-SGD with noise multiplier 1: norms, clipping and Gaussian noise
  noise        the noise alone (jaxbp's unrolled Threefry normals, one per parameter)
  noise_jax    the same number of normals from jax.random.normal
  vmap_dp      the usual JAX DP-SGD: jax.vmap(jax.grad) per example, clip, sum, the same noise
  dp_poisson   dp on fit's Poisson buffer: capacity K > batch rows, the padding weighted 0
Ratios are medians of paired per-rotation ratios with their 95% interval (jaxbp.bench._timing).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import _sampling
from jaxbp.backprop import backprop
from jaxbp.bench import CONFIGS
from jaxbp.bench._timing import interleaved, ratio
from jaxbp.bench.mlp import _problem
from jaxbp.quantities.dp import _gaussian_like, dp_sgd

TRAIN_SIZE = {"digits": 1437}  # the data fit samples from (digits' training split); else 100b


def vmap_dp(model, loss, clip_norm, sigma):
    """DP-SGD as JAX users write it: per-example jax.grad under vmap, clipped, summed, noised."""

    def grads(params, x, y, key):
        one = lambda p, xi, yi: loss.apply(model.apply(p, xi[None]), yi[None])  # noqa: E731
        g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, x, y)
        sq = sum(jnp.sum(jnp.square(a.reshape(len(x), -1)), 1) for a in jax.tree.leaves(g))
        c = clip_norm / jnp.maximum(jnp.sqrt(sq), clip_norm)
        total = jax.tree.map(lambda a: jnp.tensordot(c, a, 1), g)
        noise = _gaussian_like(key, total, sigma * clip_norm)
        return jax.tree.map(lambda s, z: (s + z) / len(x), total, noise)

    return grads


def jax_normal_like(key, tree):
    """The same noise from jax.random.normal (rolled Threefry on CPU), one flat draw, split."""
    leaves, treedef = jax.tree.flatten(tree)
    flat = jax.random.normal(key, (sum(a.size for a in leaves),))
    ends = np.cumsum([a.size for a in leaves])
    return jax.tree.unflatten(
        treedef, [flat[e - a.size : e].reshape(a.shape) for a, e in zip(leaves, ends)]
    )


def candidates(name: str):
    config = CONFIGS[name]
    model, loss, params, x, y = _problem(config)
    key, b = jax.random.PRNGKey(1), config.batch
    n = TRAIN_SIZE.get(name, 100 * b)
    K = _sampling.capacity(n, b)
    xk = jnp.concatenate([x, x[: K - b]]) if K > b else x[:K]
    yk = jnp.concatenate([y, y[: K - b]]) if K > b else y[:K]
    mask = (jnp.arange(K) < b).astype(jnp.float32)
    clip, noisy = dp_sgd(1.0, 0.0, delta=None), dp_sgd(1.0, 1.0, delta=None)
    fns = {
        "backprop": jax.jit(lambda p: backprop(model, loss, p, x, y)[1]),
        "dp_clip": jax.jit(lambda p: clip(model, loss, p, x, y)[1]),
        "dp": jax.jit(lambda p: noisy(model, loss, p, x, y, key=key)[1]),
        "noise": jax.jit(lambda p: _gaussian_like(key, p, 1.0)),
        "noise_jax": jax.jit(lambda p: jax_normal_like(key, p)),
        "vmap_dp": jax.jit(lambda p: vmap_dp(model, loss, 1.0, 1.0)(p, x, y, key)),
        "dp_poisson": jax.jit(
            lambda p: noisy(model, loss, p, xk, yk, key=key, weights=mask, expected_size=b)[1]
        ),
    }
    sizes = {"batch": b, "poisson_capacity": K, "train_size": n}
    params_count = sum(a.size for a in jax.tree.leaves(params))
    return {k: (lambda f=f: f(params)) for k, f in fns.items()}, sizes | {"params": params_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["digits", "wide"])
    parser.add_argument("--seconds", type=float, default=6.0, help="of sampling per config")
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    results = {"device": jax.devices()[0].device_kind, "configs": {}}
    for name in args.configs:
        fns, sizes = candidates(name)
        t = interleaved(fns, reps=20, seconds=args.seconds)
        row = {"sizes": sizes, "median_us": {k: float(np.median(v) * 1e6) for k, v in t.items()}}
        row["ratio_to_backprop"] = {k: ratio(v, t["backprop"]) for k, v in t.items()}
        row["noise_share_of_dp"] = ratio(t["noise"], t["dp"])
        results["configs"][name] = row
        print(f"{name} ({CONFIGS[name].describe()}; {sizes}):")
        for k, r in row["ratio_to_backprop"].items():
            print(
                f"  {k:<11} {row['median_us'][k]:9.1f} us   x{r['median']:.2f} "
                f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"
            )
        print(f"  noise / dp  {row['noise_share_of_dp']['median']:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

"""Checkpoints round-trip bit for bit, refuse bad files loudly, and never lose the last good one."""

import errno
import functools
import json
import os
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbp import checkpoint

OPT = optax.adam(1e-3)


def make_params(key):
    k1, k2, k3 = jax.random.split(key, 3)
    first = {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))}
    return (first, {"w": jax.random.normal(k3, (4, 2)), "b": jnp.zeros(2)})


@functools.cache
def trained_state(steps=3):
    """Params and adam state after a few updates, so nothing equals a fresh template."""
    params = make_params(jax.random.key(0))
    opt_state = OPT.init(params)
    for _ in range(steps):
        grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
        updates, opt_state = OPT.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state}


def fresh_template():
    params = jax.tree.map(jnp.zeros_like, make_params(jax.random.key(1)))
    return {"params": params, "opt_state": OPT.init(params)}


def assert_trees_bitwise_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert (g.shape, g.dtype) == (w.shape, w.dtype)
        assert g.tobytes() == w.tobytes()


def leaf_paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def dir_listing(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_params_and_adam_state_bit_for_bit(tmp_path, compress):
    state = trained_state()
    checkpoint.save(tmp_path / "ckpt.npz", state, compress=compress)
    restored, metadata = checkpoint.load(tmp_path / "ckpt.npz", like=fresh_template())
    assert_trees_bitwise_equal(restored, state)
    assert metadata == {}
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(restored))
    adam, empty = restored["opt_state"]
    assert isinstance(adam, optax.ScaleByAdamState) and isinstance(empty, optax.EmptyState)


def test_resumed_training_takes_the_same_next_step(tmp_path):
    state = trained_state()
    checkpoint.save(tmp_path / "ckpt.npz", state)
    restored, _ = checkpoint.load(tmp_path / "ckpt.npz", like=fresh_template())

    @jax.jit
    def step(s):
        grads = jax.tree.map(jnp.cos, s["params"])
        updates, opt_state = OPT.update(grads, s["opt_state"], s["params"])
        return optax.apply_updates(s["params"], updates), opt_state

    assert_trees_bitwise_equal(step(restored), step(state))


def test_compress_flag_chooses_deflate(tmp_path):
    for compress, method in [(False, zipfile.ZIP_STORED), (True, zipfile.ZIP_DEFLATED)]:
        checkpoint.save(tmp_path / "c.npz", trained_state(), compress=compress)
        with zipfile.ZipFile(tmp_path / "c.npz") as zf:
            assert {info.compress_type for info in zf.infolist()} == {method}


def test_metadata_round_trip(tmp_path):
    key = jax.random.key(42)
    metadata = {
        "epoch": 7,
        "step": 1400,
        "config": {"lr": 1e-3, "layers": [784, 128, 10], "name": "mlp", "shuffle": True},
        "rng_key": jax.random.key_data(key).tolist(),
        "history": [{"loss": 2.3, "acc": 0.11}, {"loss": 0.41, "acc": 0.88}],
    }
    checkpoint.save(tmp_path / "ckpt.npz", trained_state(), metadata=metadata)
    _, got = checkpoint.load(tmp_path / "ckpt.npz", like=fresh_template())
    assert got == metadata
    # The key survives as a list of ints: rewrapped, it draws the same numbers.
    rewrapped = jax.random.wrap_key_data(jnp.asarray(got["rng_key"], jnp.uint32))
    assert jnp.array_equal(jax.random.normal(rewrapped, (4,)), jax.random.normal(key, (4,)))


def test_plain_np_load_reads_every_leaf_and_the_header(tmp_path):
    state = trained_state()
    checkpoint.save(tmp_path / "ckpt.npz", state, metadata={"step": 5})
    with np.load(tmp_path / "ckpt.npz") as npz:
        header = json.loads(npz["__metadata__"].tobytes().decode("utf-8"))
        assert sorted(npz.files) == sorted(leaf_paths(state) + ["__metadata__"])
        for path, leaf in zip(leaf_paths(state), jax.tree.leaves(state), strict=True):
            np.testing.assert_array_equal(npz[path], np.asarray(leaf))
    assert (header["format"], header["version"]) == (checkpoint.FORMAT, checkpoint.VERSION)
    assert [leaf["path"] for leaf in header["leaves"]] == leaf_paths(state)
    assert header["leaves"][0] == {"path": "['opt_state'][0].count", "shape": [], "dtype": "int32"}
    assert header["metadata"] == {"step": 5}


def test_load_without_template_returns_arrays_by_path(tmp_path):
    state = trained_state()
    checkpoint.save(str(tmp_path / "ckpt.npz"), state)
    arrays, _ = checkpoint.load(str(tmp_path / "ckpt.npz"))
    assert list(arrays) == leaf_paths(state)
    for got, want in zip(arrays.values(), jax.tree.leaves(state), strict=True):
        assert isinstance(got, np.ndarray)
        assert got.tobytes() == np.asarray(want).tobytes()


def test_shape_dtype_struct_template_gives_jax_arrays(tmp_path):
    state = trained_state()
    checkpoint.save(tmp_path / "ckpt.npz", state)
    restored, _ = checkpoint.load(tmp_path / "ckpt.npz", like=jax.eval_shape(lambda: state))
    assert_trees_bitwise_equal(restored, state)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(restored))


def test_bfloat16_round_trips_bitwise_and_is_stored_as_uint16(tmp_path):
    bits = np.array([0x0000, 0x0001, 0x3F80, 0x7F80, 0x7FC1, 0xFF80, 0x8000], np.uint16)
    tree = {"x": jnp.asarray(bits.view(jnp.bfloat16))}
    checkpoint.save(tmp_path / "bf.npz", tree)
    restored, _ = checkpoint.load(tmp_path / "bf.npz", like={"x": jnp.zeros(7, jnp.bfloat16)})
    assert restored["x"].dtype == jnp.bfloat16
    assert np.asarray(restored["x"]).view(np.uint16).tolist() == bits.tolist()
    with np.load(tmp_path / "bf.npz") as npz:
        assert npz["['x']"].dtype == np.uint16


def test_float64_round_trips_as_a_jax_array_under_x64(tmp_path, x64):
    value = jnp.asarray([0.1, 1 / 3, np.pi], jnp.float64)
    checkpoint.save(tmp_path / "f64.npz", {"x": value})
    restored, _ = checkpoint.load(tmp_path / "f64.npz", like={"x": jnp.zeros(3, jnp.float64)})
    assert isinstance(restored["x"], jax.Array) and restored["x"].dtype == jnp.float64
    assert np.asarray(restored["x"]).tobytes() == np.asarray(value).tobytes()


def test_float64_into_a_numpy_template_stays_numpy_without_x64(tmp_path):
    value = np.array([0.1, 1 / 3, np.pi], np.float64)
    checkpoint.save(tmp_path / "f64.npz", {"x": value})
    restored, _ = checkpoint.load(tmp_path / "f64.npz", like={"x": np.zeros(3)})
    # Through JAX with x64 off it would come back float32; numpy keeps every bit.
    assert isinstance(restored["x"], np.ndarray) and restored["x"].tobytes() == value.tobytes()


def _reshape_first_w(t):
    t["params"][0]["w"] = jnp.zeros((4, 3))
    return t


def _retype_first_w(t):
    t["params"][0]["w"] = jnp.zeros((3, 4), jnp.float16)
    return t


def _add_leaf(t):
    t["params"][1]["scale"] = jnp.ones(2)
    return t


def _drop_leaf(t):
    del t["params"][1]["b"]
    return t


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            _reshape_first_w,
            "['params'][0]['w']: checkpoint has float32[3, 4], template has float32[4, 3]",
        ),
        (
            _retype_first_w,
            "['params'][0]['w']: checkpoint has float32[3, 4], template has float16[3, 4]",
        ),
        (_add_leaf, "leaf ['params'][1]['scale'] is missing"),
        (_drop_leaf, "leaf ['params'][1]['b'] is not in the template"),
    ],
)
def test_mismatched_template_names_the_leaf(tmp_path, edit, message):
    checkpoint.save(tmp_path / "ckpt.npz", trained_state())
    with pytest.raises(ValueError, match=re.escape(message)):
        checkpoint.load(tmp_path / "ckpt.npz", like=edit(fresh_template()))


class _DiskFullAfter:
    """A file whose writes fail with ENOSPC once ``limit`` bytes have been written."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def _fail(exc):
    def raiser(*args, **kwargs):
        raise exc

    return raiser


@pytest.mark.parametrize(
    "target, replacement",
    [
        ("replace", lambda real: _fail(OSError(errno.EIO, "rename failed"))),
        ("replace", lambda real: _fail(KeyboardInterrupt())),
        ("fsync", lambda real: _fail(OSError(errno.EIO, "fsync failed"))),
        ("fdopen", lambda real: lambda fd, mode: _DiskFullAfter(real(fd, mode), 500)),
    ],
    ids=["replace-oserror", "replace-interrupt", "fsync-oserror", "disk-full-mid-write"],
)
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, target, replacement):
    path = tmp_path / "ckpt.npz"
    old_state = trained_state(steps=1)
    checkpoint.save(path, old_state, metadata={"step": 1})
    old_bytes = path.read_bytes()

    monkeypatch.setattr(os, target, replacement(getattr(os, target)))
    with pytest.raises((OSError, KeyboardInterrupt)):
        checkpoint.save(path, trained_state(steps=2), metadata={"step": 2})
    monkeypatch.undo()

    assert dir_listing(tmp_path) == ["ckpt.npz"]
    assert path.read_bytes() == old_bytes
    restored, metadata = checkpoint.load(path, like=fresh_template())
    assert_trees_bitwise_equal(restored, old_state)
    assert metadata == {"step": 1}


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _fail(OSError(errno.EIO, "rename failed")))
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "ckpt.npz", trained_state())
    assert dir_listing(tmp_path) == []


def test_save_creates_parent_directories(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "step_10.npz"
    checkpoint.save(str(path), trained_state())
    assert dir_listing(path.parent) == ["step_10.npz"]


def test_save_refuses_unsaveable_input_before_writing(tmp_path):
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path / "a.npz", trained_state(), metadata={"bad": object()})
    with pytest.raises(TypeError, match=re.escape("leaf ['x']")):
        checkpoint.save(tmp_path / "b.npz", {"x": np.array(["a", "b"])})
    assert dir_listing(tmp_path) == []


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_raises_value_error(tmp_path, keep):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, trained_state())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        checkpoint.load(path, like=fresh_template())


def _flip_a_data_byte(path):
    data = bytearray(path.read_bytes())
    needle = np.asarray(trained_state()["params"][0]["w"]).tobytes()
    data[data.index(needle) + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def _write_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.ones(3))


HEADER_V2 = '{"format": "jaxbp.checkpoint", "version": 2}'
HEADER_V1_EMPTY = '{"format": "jaxbp.checkpoint", "version": 1}'


def _write_header(path, text):
    np.savez(path, __metadata__=np.frombuffer(text.encode("utf-8"), np.uint8))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: p.write_text("not a checkpoint"), "not a zip archive"),
        (_write_npy, "not a zip archive"),
        (lambda p: np.savez(p, w=np.ones(3)), "no __metadata__ entry"),
        (lambda p: _write_header(p, "{not json"), "Expecting property name"),
        (lambda p: _write_header(p, '{"format": "other", "version": 1}'), "does not describe"),
        (lambda p: _write_header(p, HEADER_V2), "format version 2, this reader knows 1"),
        (lambda p: _write_header(p, HEADER_V1_EMPTY), "lacks the leaves list"),
        (_flip_a_data_byte, "CRC"),
    ],
    ids=["text", "npy", "no-metadata", "bad-json", "wrong-format", "v2", "no-leaves", "flipped"],
)
def test_damaged_file_raises_value_error(tmp_path, damage, reason):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, trained_state())
    damage(path)
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        checkpoint.load(path, like=fresh_template())
    assert reason in str(info.value)


FIRED = []


def _payload_ran():
    FIRED.append("ran")
    return "pwned"


class _Payload:
    """Unpickling this calls ``_payload_ran``: proof that code ran on load."""

    def __reduce__(self):
        return (_payload_ran, ())


@pytest.mark.parametrize("entry", ["['w']", "__metadata__"])
def test_pickled_object_array_is_refused_without_running_it(tmp_path, entry):
    header = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "metadata": {}}
    header["leaves"] = [{"path": "['w']", "shape": [1], "dtype": "float32"}]
    arrays = {
        "['w']": np.ones(1, np.float32),
        "__metadata__": np.frombuffer(json.dumps(header).encode(), np.uint8),
    }
    arrays[entry] = np.array([_Payload()], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, allow_pickle=True, **arrays)
    FIRED.clear()

    with pytest.raises(ValueError, match=re.escape(str(path))):
        checkpoint.load(path, like={"w": jnp.zeros(1)})
    assert FIRED == []
    # The payload is live: numpy with pickling allowed does run it.
    np.load(path, allow_pickle=True)[entry]
    assert FIRED == ["ran"]


def test_latest_picks_the_highest_step(tmp_path):
    assert checkpoint.latest(tmp_path) is None
    for name in ["step_100.npz", "step_9.npz", "step_1200.npz", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".step_5000.npz.abc123.tmp").write_bytes(b"")
    assert checkpoint.latest(tmp_path) == tmp_path / "step_1200.npz"

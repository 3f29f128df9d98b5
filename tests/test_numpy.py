"""adamax.numpy.Adamax: trees of arrays, all-or-nothing steps and checkpoint loads."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adamax import compact, reference
from adamax.numpy import Adamax, RowGradient
from adamax.spec import AdamaxConfig


def make_tree(rng):
    return {
        "encoder": {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)},
        "head": [rng.standard_normal(2).astype(np.float32), np.array(0.25)],
    }


def grads_like(tree, rng):
    if isinstance(tree, dict):
        return {k: grads_like(v, rng) for k, v in tree.items()}
    if isinstance(tree, list):
        return [grads_like(v, rng) for v in tree]
    return rng.standard_normal(tree.shape).astype(tree.dtype)


def snapshot(opt):
    """Deep copies of every param and the whole state."""
    return {path: leaf.copy() for path, leaf in opt._leaves.items()}, copy.deepcopy(opt.state), opt.config


def assert_unchanged(opt, before):
    params, state, config = before
    for path, leaf in opt._leaves.items():
        np.testing.assert_array_equal(leaf, params[path], err_msg=path)
    assert set(opt.state) == set(state)
    for path, s in opt.state.items():
        assert s.step == state[path].step
        np.testing.assert_array_equal(s.exp_avg, state[path].exp_avg)
        np.testing.assert_array_equal(s.exp_inf, state[path].exp_inf)
    assert opt.config == config


def test_nested_tree_matches_reference_per_array():
    rng = np.random.default_rng(0)
    params = make_tree(rng)
    opt = Adamax(params, lr=0.01, weight_decay=0.1)
    expected = {path: (leaf.copy(), reference.init(leaf)) for path, leaf in opt._leaves.items()}
    assert sorted(opt._leaves) == ["encoder/b", "encoder/w", "head/0", "head/1"]
    for _ in range(4):
        grads = grads_like(params, rng)
        opt.step(grads)
        flat = {
            "encoder/w": grads["encoder"]["w"],
            "encoder/b": grads["encoder"]["b"],
            "head/0": grads["head"][0],
            "head/1": grads["head"][1],
        }
        for path, (p, s) in expected.items():
            expected[path] = reference.update(p, flat[path], s, opt.config)
            np.testing.assert_array_equal(opt._leaves[path], expected[path][0])
    assert params["head"][0].dtype == np.float32  # updated in place, dtype kept
    assert opt.state["head/1"].step == 4


BAD_GRADS = {  # the spoiling, and the error a user is shown
    "wrong shape": (lambda g: g["encoder"].__setitem__("b", np.zeros(4)), r"'encoder/b' has shape \(4,\)"),
    "wrong dtype": (lambda g: g["head"].__setitem__(0, np.zeros(2, np.float64)), "'head/0' has dtype float64"),
    "missing": (lambda g: g["encoder"].pop("w"), "missing gradient for 'encoder/w'"),
    "None": (lambda g: g["head"].__setitem__(1, None), "missing gradient for 'head/1'"),
    "unknown": (lambda g: g.__setitem__("extra", np.zeros(1)), "gradient for unknown param 'extra'"),
    "not an array": (
        lambda g: g["encoder"].__setitem__("b", [0.0, 0.0, 0.0]),
        "'encoder/b' must be a numpy array, got a list",
    ),
}


@pytest.mark.parametrize(("spoil", "message"), BAD_GRADS.values(), ids=BAD_GRADS.keys())
def test_a_refused_step_changes_nothing(spoil, message):
    rng = np.random.default_rng(1)
    params = make_tree(rng)
    opt = Adamax(params, lr=0.01)
    opt.step(grads_like(params, rng))
    before = snapshot(opt)
    grads = grads_like(params, rng)
    spoil(grads)
    with pytest.raises((TypeError, ValueError), match=message):
        opt.step(grads)
    assert_unchanged(opt, before)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run():
    rng = np.random.default_rng(2)
    grads = [grads_like(make_tree(np.random.default_rng(9)), rng) for _ in range(10)]
    straight = make_tree(np.random.default_rng(9))
    opt = Adamax(straight, lr=0.05, eps_placement="denominator")
    for g in grads:
        opt.step(g)

    resumed = make_tree(np.random.default_rng(9))
    first = Adamax(resumed, lr=0.05, eps_placement="denominator")
    for g in grads[:5]:
        first.step(g)
    saved = pickle.loads(pickle.dumps(first.state_dict()))
    second = Adamax(resumed)  # default hyperparameters: the checkpoint brings its own
    second.load_state_dict(saved)
    assert second.config == first.config
    for g in grads[5:]:
        second.step(g)
    for path in opt._leaves:
        np.testing.assert_array_equal(opt._leaves[path], second._leaves[path])


def test_state_dict_is_a_snapshot():
    params = [np.ones(3)]
    opt = Adamax(params)
    opt.step([np.ones(3)])
    saved = opt.state_dict()
    saved["state"]["0"]["exp_avg"][:] = 99.0
    assert not np.any(opt.state["0"].exp_avg == 99.0)


@pytest.mark.parametrize("state_format", ["full", "compact"])
def test_a_loaded_checkpoint_is_copied_not_shared(state_format):
    """Writing into the checkpoint's arrays after loading it does not reach the optimizer."""
    params = {"w": np.linspace(-1, 1, 300).astype(np.float32)}
    opt = Adamax(params, lr=0.01, state_format=state_format)
    opt.step({"w": np.ones(300, np.float32)})
    saved = opt.state_dict()
    pristine = copy.deepcopy(saved)
    twin = Adamax({"w": params["w"].copy()}, lr=0.01, state_format=state_format)
    opt.load_state_dict(saved)
    twin.load_state_dict(pristine)
    for value in saved["state"]["w"].values():
        if isinstance(value, np.ndarray):
            value[...] = 7  # the caller reuses its buffers
    g = {"w": np.linspace(2, -2, 300).astype(np.float32)}
    opt.step(g)
    twin.step(g)
    np.testing.assert_array_equal(opt._leaves["w"], twin._leaves["w"])
    for a, b in zip(opt.state["w"], twin.state["w"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "numpy"])
def test_arrays_at_different_step_counts_each_take_their_own_step_size(fused):
    """A checkpoint whose arrays have taken different numbers of steps (one added to the model later, say): each
    array's bias correction uses its own count, as the reference computes it per array."""
    rng = np.random.default_rng(5)
    start = {"a": rng.standard_normal(400).astype(np.float32), "b": rng.standard_normal(300).astype(np.float32)}
    states = {"a": reference.init(start["a"]), "b": reference.init(start["b"])}
    config = AdamaxConfig(lr=0.01)
    values = {k: v.copy() for k, v in start.items()}
    for path, steps in (("a", 2), ("b", 9)):
        for _ in range(steps):
            values[path], states[path] = reference.update(
                values[path], rng.standard_normal(values[path].size).astype(np.float32), states[path], config
            )
    opt = Adamax({k: v.copy() for k, v in values.items()}, lr=0.01, fused=fused)
    opt.load_state_dict({"state": {k: s._asdict() for k, s in states.items()}, "hyperparams": config.to_dict()})
    g = {k: rng.standard_normal(v.size).astype(np.float32) for k, v in values.items()}
    opt.step(g)
    for path in ("a", "b"):
        expected, state = reference.update(values[path], g[path], states[path], config)
        np.testing.assert_array_equal(opt._leaves[path], expected)
        assert opt.state[path].step == state.step == (3 if path == "a" else 10)


def _checkpoint():
    params = make_tree(np.random.default_rng(3))
    opt = Adamax(params)
    opt.step(grads_like(params, np.random.default_rng(4)))
    return opt.state_dict()


BAD_CHECKPOINTS = {  # the spoiling, and the error a user is shown
    "not a dict": (lambda sd: [sd], "expected a state dict with keys 'state' and 'hyperparams', got list"),
    "missing hyperparams": (lambda sd: {"state": sd["state"]}, r"got \['state'\]"),
    "extra top-level key": (lambda sd: {**sd, "param_groups": []}, r"got \['hyperparams', 'param_groups', 'state'\]"),
    "invalid lr": (lambda sd: {**sd, "hyperparams": {**sd["hyperparams"], "lr": -1.0}}, "Invalid learning rate: -1.0"),
    "unknown hyperparameter": (
        lambda sd: {**sd, "hyperparams": {**sd["hyperparams"], "amsgrad": True}},
        "unknown hyperparameters: 'amsgrad'",
    ),
    "missing param": (
        lambda sd: {**sd, "state": {k: v for k, v in sd["state"].items() if k != "head/0"}},
        r"missing \['head/0'\], unknown \[\]$",
    ),
    "unknown param": (
        lambda sd: {**sd, "state": {**sd["state"], "decoder/w": sd["state"]["head/0"]}},
        r"missing \[\], unknown \['decoder/w'\]$",
    ),
    "wrong shape": (
        lambda sd: _set(sd, "encoder/w", "exp_inf", np.zeros((3, 4))),
        r"'encoder/w': exp_inf has shape \(3, 4\), expected the param's shape \(4, 3\)",
    ),
    "wrong dtype": (lambda sd: _set(sd, "head/0", "exp_avg", np.zeros(2, np.float64)), "'head/0': exp_avg has dtype"),
    "not an array": (lambda sd: _set(sd, "head/1", "exp_avg", 0.0), "'head/1': exp_avg must be a numpy array"),
    "negative step": (lambda sd: _set(sd, "encoder/b", "step", -3), "'encoder/b': step must be a non-negative"),
    "float step": (lambda sd: _set(sd, "encoder/b", "step", 2.5), "'encoder/b': step must be a non-negative"),
    "a step no step can count": (
        lambda sd: _set(sd, "encoder/b", "step", 2**63),
        r"'encoder/b': step must be a non-negative integer, got 9223372036854775808 \(counts stop at 2\*\*53 - 1\)",
    ),
    "a compact step as a string": (
        lambda sd: _set(_compact_entry(sd, "head/0"), "head/0", "step", "3"),
        r"'head/0': step must be a whole number >= 0, got '3'",
    ),
    "a compact step no step can count": (
        lambda sd: _set(_compact_entry(sd, "head/0"), "head/0", "step", 1e19),
        r"'head/0': step must be a whole number >= 0, got 1e\+19 \(counts stop",
    ),
    "a compact code above the largest": (
        lambda sd: _set(_compact_entry(sd, "head/0"), "head/0", "exp_inf_code", np.full(2, compact.ONE + 1, np.uint16)),
        "'head/0': exp_inf_code holds codes above",
    ),
    "missing key": (
        lambda sd: {**sd, "state": {**sd["state"], "head/1": {"step": 1, "exp_avg": np.zeros(())}}},
        "'head/1' must have exactly the keys",
    ),
    "compact keys and one more": (  # a set of keys of neither format: the message names both
        lambda sd: _set(_compact_entry(sd, "head/1"), "head/1", "exp_inf", np.zeros(3, np.float32)),
        r"'head/1' must have exactly the keys \['exp_avg', 'exp_inf', 'step'\] \(full\), ",
    ),
    "some of the compact keys": (
        lambda sd: _drop(_compact_entry(sd, "head/1"), "head/1", "exp_inf_scale"),
        r"'head/1' must have exactly the keys \['exp_avg', 'exp_inf', 'step'\] \(full\), ",
    ),
}


def _compact_entry(sd, path):
    """``sd`` with ``path``'s entry in the compact format, converted from its full one."""
    sd = copy.deepcopy(sd)
    entry = sd["state"][path]
    state = compact.from_full(entry["step"], entry["exp_avg"].astype(np.float32), entry["exp_inf"].astype(np.float32))
    sd["state"][path] = dict(zip(state._fields, state))
    return sd


def _drop(sd, path, key):
    del sd["state"][path][key]
    return sd


def _set(sd, path, key, value):
    sd = copy.deepcopy(sd)
    sd["state"][path][key] = value
    return sd


@pytest.mark.parametrize(("spoil", "message"), BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_a_refused_checkpoint_changes_nothing(spoil, message):
    rng = np.random.default_rng(5)
    params = make_tree(rng)
    opt = Adamax(params, lr=0.3, eps_placement="none")
    opt.step(grads_like(params, rng))
    before = snapshot(opt)
    with pytest.raises((TypeError, ValueError), match=message):
        opt.load_state_dict(spoil(_checkpoint()))
    assert_unchanged(opt, before)


def test_the_defaults_are_the_specs_and_so_torchs():
    assert Adamax([np.ones(2)]).config == AdamaxConfig()


def test_a_compact_checkpoint_loads_with_an_integer_step_and_saves_it_back_as_one():
    params = {"w": np.ones(5, np.float32)}
    opt = Adamax(params, state_format="compact")
    for _ in range(3):
        opt.step({"w": np.full(5, 0.5, np.float32)})
    saved = opt.state_dict()
    parsed_keys = {
        "state": {"w": {json.loads(json.dumps(k)): v for k, v in saved["state"]["w"].items()}},
        "hyperparams": saved["hyperparams"],
    }  # keys as a config or JSON file gives them: not interned
    for fmt, checkpoint in (("compact", saved), ("full", saved), ("compact", parsed_keys), ("full", parsed_keys)):
        other = Adamax({"w": np.ones(5, np.float32)}, state_format=fmt)
        other.load_state_dict(checkpoint)
        step = other.state_dict()["state"]["w"]["step"]
        assert type(step) is int and step == 3


def test_empty_state_loads_as_fresh():
    opt = Adamax([np.ones(2)])
    opt.step([np.ones(2)])
    opt.load_state_dict(Adamax([np.ones(2)], lr=0.1).state_dict())
    assert opt.state == {} and opt.config.lr == 0.1


BAD_PARAMS = {
    "integer": ([np.arange(3)], TypeError, "dtype int64"),
    "read-only": ([np.broadcast_to(np.ones(1), (3,))], ValueError, "read-only"),
    "same array twice": ((lambda a: [a, a])(np.ones(3)), ValueError, "share memory"),
    "overlapping views": ((lambda a: [a[:3], a[2:]])(np.ones(5)), ValueError, "share memory"),
    "a list, not an array": ([[1.0, 2.0]], TypeError, "must be a numpy array"),
    "slash in a key": ({"a/b": np.ones(1)}, TypeError, "without '/', got 'a/b' at 'the root'"),
    "an empty key, nested": ({"enc": {"": np.ones(1)}}, TypeError, "non-empty strings without '/', got '' at 'enc'"),
    "a number as a key": ({3: np.ones(1)}, TypeError, "non-empty strings without '/', got 3 at 'the root'"),
    "no params": ([], ValueError, "empty parameter list"),
    "an empty dict": ({}, ValueError, "empty parameter list"),
}


@pytest.mark.parametrize(("params", "error", "message"), BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_bad_params_are_refused_at_construction(params, error, message):
    with pytest.raises(error, match=message):
        Adamax(params)


def test_interleaved_views_are_accepted():
    a = np.zeros(6)
    Adamax([a[::2], a[1::2]], lr=0.5, eps_placement="none").step([np.ones(3), -np.ones(3)])
    np.testing.assert_array_equal(a, [-0.5, 0.5] * 3)


def test_invalid_hyperparameters_are_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1\.0$"):
        Adamax([np.ones(1)], lr=-1.0)


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20), st.integers(1, 5))
def test_steps_match_the_reference(values, steps):
    p = np.array(values)
    opt = Adamax([p], lr=0.1, betas=(0.8, 0.99))
    ref, state = p.copy(), reference.init(p)
    for k in range(steps):
        g = np.cos(np.arange(len(values)) + k) * (k + 1)
        opt.step([g])
        ref, state = reference.update(ref, g, state, opt.config)
        np.testing.assert_array_equal(p, ref)


@pytest.mark.parametrize("wrong", [[1.0, 2.0, 3.0], (1.0, 2.0, 3.0), {"x": np.ones(3)}], ids=["list", "tuple", "dict"])
def test_a_container_given_as_a_gradient_is_named_as_such(wrong):
    params = {"w": np.zeros(3), "b": np.zeros(1)}
    opt = Adamax(params, lr=0.1)
    with pytest.raises(TypeError, match=r"gradient for 'w' must be a numpy array, got a list, tuple or dict"):
        opt.step({"w": wrong, "b": np.ones(1)})
    assert not opt.state and not params["w"].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("fused", [None, True, False])
def test_a_state_format_parsed_from_a_config_file_steps_as_the_literal(fused, dtype):
    if fused:
        pytest.importorskip("numba")
    literal = "compact"
    parsed = json.loads('"compact"')
    assert parsed == literal and parsed is not literal  # equal, not the same object
    full_params = {"w": np.linspace(-1, 1, 300).astype(dtype)}
    full = Adamax(full_params)
    full.step({"w": (np.sin(np.arange(300)) + 2).astype(dtype)})  # no zero: eps = 1e-8 is 0 in float16
    results = []
    for state_format in (literal, parsed):
        params = {"w": np.linspace(-1, 1, 300).astype(dtype)}
        opt = Adamax(params, state_format=state_format, fused=fused)
        for k in range(3):
            opt.step({"w": np.cos(np.arange(300) + k).astype(dtype)})
        saved = opt.state_dict()
        again = Adamax({"w": params["w"].copy()}, state_format=state_format, fused=fused)
        again.load_state_dict(saved)  # a compact checkpoint, kept compact
        converted = Adamax({"w": params["w"].copy()}, state_format=state_format, fused=fused)
        converted.load_state_dict(full.state_dict())  # a full one, converted
        for o in (again, converted):
            o.step({"w": np.cos(np.arange(300)).astype(dtype)})
        results.append([params["w"], saved["state"]["w"], again.state_dict()["state"]["w"]])
        results[-1].append(converted.state_dict()["state"]["w"])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for ours, theirs in zip(results[0][1:], results[1][1:]):
        assert ours.keys() == theirs.keys() == {"step", "exp_avg", "exp_inf_code", "exp_inf_scale"}
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_a_parsed_compact_state_format_refuses_float64_params_as_the_literal_does():
    for state_format in ("compact", json.loads('"compact"')):
        with pytest.raises(TypeError, match="compact state computes in float32"):
            Adamax({"w": np.ones(2)}, state_format=state_format)


def test_without_numba_fused_true_is_refused_and_the_rest_steps_by_the_reference(monkeypatch):
    from adamax.numpy import _full, _optimizer

    for module in (_optimizer, _full):
        monkeypatch.setattr(module, "cpu_kernels", lambda: None)
    with pytest.raises(RuntimeError, match="fused=True needs numba"):
        Adamax([np.ones(3)], fused=True)
    for fused in (None, False):
        params = [np.ones(3)]
        opt = Adamax(params, lr=0.1, fused=fused)
        opt.step([np.full(3, 2.0)])
        want, _ = reference.update(np.ones(3), np.full(3, 2.0), reference.init(np.ones(3)), opt.config)
        np.testing.assert_array_equal(params[0], want)


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("state_format", ["full", "compact"])
def test_a_param_made_read_only_after_construction_is_refused_before_any_write(fused, state_format):
    """The fused kernel writes through an array's address, whatever its flags say: a param made read-only after
    construction (the first param here steps before it) is refused before anything is written."""
    params = {"a": np.linspace(-1, 1, 300, dtype=np.float32), "b": np.ones(300, np.float32)}
    opt = Adamax(params, lr=0.01, fused=fused, state_format=state_format)
    grads = {"a": np.ones(300, np.float32), "b": np.ones(300, np.float32)}
    opt.step(grads)
    params["b"].flags.writeable = False
    before = {k: v.copy() for k, v in params.items()}, copy.deepcopy(opt.state)
    with pytest.raises(ValueError, match="param 'b' is read-only"):
        opt.step(grads)
    assert all(np.array_equal(params[k], before[0][k]) for k in params)
    for path, entry in opt.state.items():
        assert all(np.array_equal(a, b) for a, b in zip(entry, before[1][path]))


@pytest.mark.parametrize("state_format", ["full", "compact", "lazy"])
def test_state_dict_hands_out_no_array_of_the_optimizers(state_format):
    """Every array of every entry is a copy: writing into a saved state dict never reaches the optimizer."""
    params = {"w": np.linspace(-1, 1, 300).astype(np.float32), "t": np.ones((6, 2), np.float32)}
    kwargs = {"lazy": ["t"]} if state_format == "lazy" else {"state_format": state_format}
    opt = Adamax(params, lr=0.01, **kwargs)
    grads = {"w": np.ones(300, np.float32), "t": np.ones((6, 2), np.float32)}
    if state_format == "lazy":
        grads["t"] = RowGradient(np.array([1, 4]), np.ones((2, 2), np.float32))
    opt.step(grads)
    saved = opt.state_dict()
    for path, entry in saved["state"].items():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                live = getattr(opt.state[path], key)
                assert not np.shares_memory(value, live), (path, key)


def test_a_lazy_table_refused_beside_a_fused_array_leaves_the_fused_array_unwritten():
    """A lazy table's bad gradient is refused before the fused kernel writes the arrays stepped before it."""
    pytest.importorskip("numba")
    params = {"w": np.linspace(-1, 1, 300).astype(np.float32), "t": np.ones((6, 2), np.float32)}
    opt = Adamax(params, lr=0.01, lazy=["t"], fused=True)
    grads = {"w": np.ones(300, np.float32), "t": RowGradient(np.array([1, 4]), np.ones((2, 2), np.float32))}
    opt.step(grads)
    opt.config = opt.config.replace(weight_decay=0.1)  # coupled decay: the lazy step is refused
    before = snapshot(opt)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True"):
        opt.step(grads)
    assert_unchanged(opt, before)

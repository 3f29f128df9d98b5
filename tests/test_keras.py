"""adamax.keras against keras.optimizers.Adamax itself, on the JAX backend here and on the torch backend in a
subprocess (Keras picks its backend once per process): Keras's golden table, bit-for-bit agreement step by step
and over 100 steps of ``model.fit``, configs, ``.keras`` files, ``LossScaleOptimizer``, clipping, the other ε
placements against the NumPy reference, and refusals."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
adamax_keras = pytest.importorskip("adamax.keras")

from adamax import compact, compact8, reference  # noqa: E402
from adamax.spec import AdamaxConfig  # noqa: E402
from tests import processes  # noqa: E402

BACKEND = keras.backend.backend()


def _values(xs) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(x)) for x in xs]


def _assert_same_bits(a, b) -> None:
    a, b = _values(a), _values(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.tobytes() != y.tobytes():
            np.testing.assert_array_equal(x, y)  # shows where
            raise AssertionError("equal values, different bits (a signed zero or a NaN payload)")


def _keras_golden_table() -> np.ndarray | None:
    """The golden table of Keras's own Adamax test, read from the installed Keras (None if it does not ship it)."""
    path = Path(keras.__file__).parent / "src" / "optimizers" / "adamax_test.py"
    if not path.exists():
        return None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "golden" for t in node.targets):
            return np.array(ast.literal_eval(node.value.args[0]))
    return None


def _golden_run(opt) -> list[np.ndarray]:
    """Keras's golden-table run: ten ones, a first gradient of 0.01, then five of 0.1 ... 1.0."""
    x = keras.Variable(np.ones([10], dtype="float32"))
    opt.apply_gradients([(keras.ops.full((10,), 0.01), x)])
    seen = []
    for _ in range(5):
        seen.append(np.array(keras.ops.convert_to_numpy(x)))
        opt.apply_gradients([(keras.ops.arange(0.1, 1.1, 0.1), x)])
    return seen


def test_keras_golden_table_and_keras_own_adamax_bit_for_bit():
    hyper = {"learning_rate": 0.2, "beta_1": 0.85, "beta_2": 0.95, "epsilon": 1e-6}
    ours = _golden_run(adamax_keras.Adamax(**hyper))
    theirs = _golden_run(keras.optimizers.Adamax(**hyper))
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    golden = _keras_golden_table()
    if golden is not None:  # Keras's own tolerance
        for row, x in zip(golden, ours):
            np.testing.assert_allclose(x, row, rtol=5e-4, atol=5e-4)
    assert not np.array_equal(ours[0], ours[-1])


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])


def _data(n: int = 160):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype("float32")
    return x, (x @ np.linspace(-1, 1, 8, dtype="float32"))[:, None]


def _fit(opt, epochs: int = 10, model=None):
    model = model or _model()
    model.compile(optimizer=opt, loss="mse")
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_a_hundred_steps_of_model_fit_equal_keras_adamax(weight_decay):
    ours = _fit(adamax_keras.Adamax(learning_rate=1e-2, weight_decay=weight_decay))
    theirs = _fit(keras.optimizers.Adamax(learning_rate=1e-2, weight_decay=weight_decay))
    assert int(ours.optimizer.iterations) == 100
    _assert_same_bits(ours.weights, theirs.weights)
    _assert_same_bits(ours.optimizer.variables, theirs.optimizer.variables)
    assert not np.array_equal(_values(ours.weights)[0], _values(_model().weights)[0])


def test_adamaxw_is_adamax_with_keras_decoupled_decay_by_default():
    assert adamax_keras.AdamaxW().weight_decay == 0.004
    ours = _fit(adamax_keras.AdamaxW(learning_rate=1e-2), epochs=2)
    theirs = _fit(keras.optimizers.Adamax(learning_rate=1e-2, weight_decay=0.004), epochs=2)
    _assert_same_bits(ours.weights, theirs.weights)
    with pytest.raises(ValueError, match="weight_decay"):
        adamax_keras.AdamaxW(weight_decay=None)


def test_config_round_trips_through_get_config_and_keras_serialization():
    opt = adamax_keras.Adamax(learning_rate=0.05, beta_1=0.8, beta_2=0.95, epsilon=1e-5, eps_placement="max",
                              clipnorm=2.0)  # fmt: skip
    config = opt.get_config()
    assert config["eps_placement"] == "max" and config["beta_1"] == 0.8 and config["clipnorm"] == 2.0
    assert config["state_format"] == "full"
    compact_config = adamax_keras.Adamax(state_format="compact8").get_config()
    assert adamax_keras.Adamax.from_config(compact_config).state_format == "compact8"
    again = adamax_keras.Adamax.from_config(config)
    assert again.get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(revived) is adamax_keras.Adamax and revived.get_config() == config
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    with_schedule = adamax_keras.AdamaxW(learning_rate=schedule)
    assert adamax_keras.AdamaxW.from_config(with_schedule.get_config()).get_config() == with_schedule.get_config()


@pytest.mark.parametrize("state_format", ["full", "compact", "compact8"])
def test_a_keras_file_restores_the_optimizers_variables_and_training_continues_exactly(tmp_path, state_format):
    model = _fit(adamax_keras.Adamax(learning_rate=1e-2, eps_placement="max", state_format=state_format), epochs=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is adamax_keras.Adamax and loaded.optimizer.eps_placement == "max"
    assert loaded.optimizer.state_format == state_format
    assert int(loaded.optimizer.iterations) == 20
    _assert_same_bits(loaded.optimizer.variables, model.optimizer.variables)
    x, y = _data()
    for m in (model, loaded):
        m.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    _assert_same_bits(loaded.weights, model.weights)


def _apply(opt, grads, variables) -> None:
    """``opt.apply`` as ``model.fit`` runs it: through ``stateless_apply`` on JAX (jitted there; Keras's stateful
    path under JAX cannot run ``LossScaleOptimizer``'s conditionals eagerly), statefully elsewhere."""
    if BACKEND != "jax":
        opt.apply(grads, variables)
        return
    new_values, new_state = opt.stateless_apply([v.value for v in opt.variables], grads, [v.value for v in variables])
    for v, value in zip(variables, new_values):
        v.assign(value)
    for v, value in zip(opt.variables, new_state):
        v.assign(value)


def test_loss_scale_optimizer_wraps_it_and_a_nonfinite_step_changes_nothing():
    inner = adamax_keras.Adamax(learning_rate=0.1)
    opt = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**8)
    x = keras.Variable(np.ones(4, dtype="float32"))
    opt.build([x])
    _apply(opt, [keras.ops.full((4,), 2.0**8)], [x])  # a scaled gradient of 1
    after_one = _values([x, *inner.variables])
    assert not np.array_equal(after_one[0], np.ones(4, dtype="float32"))
    _apply(opt, [keras.ops.convert_to_tensor(np.array([1.0, np.inf, 1.0, 1.0], dtype="float32"))], [x])
    _assert_same_bits([x, *inner.variables], after_one)  # skipped whole: params, m, u, step count
    assert float(keras.ops.convert_to_numpy(opt.dynamic_scale)) == 2.0**7


@pytest.mark.parametrize("state_format", ["full", "compact", "compact8"])
def test_skip_nonfinite_skips_a_step_whole_and_only_that_step(state_format):
    opt = adamax_keras.Adamax(learning_rate=0.1, skip_nonfinite=True, state_format=state_format)
    x = keras.Variable(np.ones(4, dtype="float32"))
    opt.build([x])
    _apply(opt, [keras.ops.ones((4,))], [x])
    before = _values([x, *opt.variables])
    for bad in (np.nan, np.inf, -np.inf):
        _apply(opt, [keras.ops.convert_to_tensor(np.array([1.0, bad, 1.0, 1.0], dtype="float32"))], [x])
        _assert_same_bits([x, *opt.variables], before)  # params, m, u and the step count
        opt.apply_gradients([(keras.ops.convert_to_tensor(np.array([bad, 1.0, 1.0, 1.0], dtype="float32")), x)])
        _assert_same_bits([x, *opt.variables], before)
    _apply(opt, [keras.ops.ones((4,))], [x])
    assert int(opt.iterations) == 2 and not np.array_equal(_values([x])[0], before[0])
    assert adamax_keras.Adamax.from_config(opt.get_config()).skip_nonfinite is True


def test_model_fit_with_skip_nonfinite_ends_as_if_the_bad_batch_had_not_been_there():
    """Inside ``fit`` (jitted on JAX): a batch whose loss is infinite is skipped; the run ends where a run
    without that batch does, bit for bit."""
    x, y = _data(48)
    bad_y = y.copy()
    bad_y[16:32] = np.inf  # the second of three batches
    runs = []
    for xs, ys in ((x, bad_y), (np.concatenate([x[:16], x[32:]]), np.concatenate([y[:16], y[32:]]))):
        model = _model()
        model.compile(optimizer=adamax_keras.Adamax(learning_rate=1e-2, skip_nonfinite=True), loss="mse")
        model.fit(xs, ys, batch_size=16, epochs=1, shuffle=False, verbose=0)
        runs.append(model)
    assert int(runs[0].optimizer.iterations) == int(runs[1].optimizer.iterations) == 2
    _assert_same_bits(runs[0].weights, runs[1].weights)
    unguarded = _model()
    unguarded.compile(optimizer=adamax_keras.Adamax(learning_rate=1e-2), loss="mse")
    unguarded.fit(x, bad_y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert not np.isfinite(_values(unguarded.weights)[0]).all()  # the step it guards against spoils the weights


@pytest.mark.parametrize("clip", [{"clipnorm": 1.0}, {"clipvalue": 0.5}, {"global_clipnorm": 1.0}])
def test_gradient_clipping_is_keras_own(clip):
    runs = []
    for cls in (adamax_keras.Adamax, keras.optimizers.Adamax):
        x = keras.Variable(np.ones(3, dtype="float32"))
        opt = cls(learning_rate=0.1, **clip)
        for g in ([100.0, -100.0, 3.0], [0.1, 5.0, -7.0]):
            opt.apply_gradients([(keras.ops.convert_to_tensor(np.array(g, dtype="float32")), x)])
        runs.append(x)
    _assert_same_bits([runs[0]], [runs[1]])


@pytest.mark.parametrize("eps_placement", ["max", "denominator", "none"])
def test_every_eps_placement_follows_the_reference_within_float32_rounding(eps_placement):
    """Against :mod:`adamax.reference` (torch's rounding; Keras's order of operations differs by an ulp a step),
    including an element whose gradient is always 0, which must not move (no 0/0 with ``"none"``)."""
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((20, 6)).astype(np.float32)
    grads[:, 0] = 0
    x = keras.Variable(np.linspace(-1, 1, 6, dtype=np.float32))
    opt = adamax_keras.Adamax(learning_rate=0.01, beta_2=0.5, epsilon=0.1, eps_placement=eps_placement)
    p = np.linspace(-1, 1, 6, dtype=np.float32)
    state = reference.init(p)
    config = AdamaxConfig(lr=0.01, betas=(0.9, 0.5), eps=0.1, eps_placement=eps_placement)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), x)])
        p, state = reference.update(p, g, state, config)
    got = np.array(keras.ops.convert_to_numpy(x))
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)
    assert got[0] == np.float32(-1.0) and np.all(np.isfinite(got))
    if eps_placement != "denominator":
        other = adamax_keras.Adamax(learning_rate=0.01, beta_2=0.5, epsilon=0.1)  # the placements differ measurably
        y = keras.Variable(np.linspace(-1, 1, 6, dtype=np.float32))
        for g in grads:
            other.apply_gradients([(keras.ops.convert_to_tensor(g), y)])
        assert np.abs(np.array(keras.ops.convert_to_numpy(y)) - got).max() > 1e-4


def _keras_moment(m: np.ndarray, g: np.ndarray, beta1: float) -> np.ndarray:
    """The first moment as Keras's own Adamax rounds it on this backend, in float32."""
    if BACKEND == "torch":  # Keras's torch Adamax: m * b1, then + (1 - b1) g in one add
        import torch

        return torch.add(torch.mul(torch.from_numpy(m), beta1), torch.from_numpy(g), alpha=1 - beta1).numpy()
    f = np.float32
    return (m + (g - m) * f(1 - beta1)).astype(f)


def _definition_step(state_format, before, p, g, t, config):
    """One compact or compact8 step by the NumPy definitions (:mod:`adamax.compact`, :mod:`adamax.compact8`) from
    the optimizer's state ``before`` (its variables' values for one model variable), the first moment by Keras's
    formula: the state's arrays, flat, and the new param, by Keras's order of operations."""
    f = np.float32
    g = g.ravel()
    if state_format == "compact":
        m = _keras_moment(before[0].astype(f).ravel(), g, config.beta1)
        codes, scales, u = compact.infinity_norm(compact.u_input(g, config), before[1], before[2], config)
        state = [compact.bf16_to_f32(compact.f32_to_bf16_stochastic(m, t)), codes, scales]
    else:
        m = _keras_moment(compact8.decode_m(before[0], before[1]), g, config.beta1)
        codes, scales, u = compact.infinity_norm(compact.u_input(g, config), before[2], before[3], config, compact8.U8)
        m_scales = compact8.m_scales(m)
        random = compact.hashed(np.arange(m.size), t) >> np.uint32(32 - compact8.RANDOM_BITS)
        state = [compact8.encode_m(m, m_scales, random), m_scales, codes, scales]
    d = u + f(config.eps) if config.eps_placement == "denominator" else u
    correction = f(1) - f(config.beta1) ** f(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (f(config.lr) * m) / (correction * d)
    return state, p.ravel() - np.where(d == 0, f(0), step)


@pytest.mark.parametrize("eps_placement", ["denominator", "max", "none"])
@pytest.mark.parametrize("state_format", ["compact", "compact8"])
def test_compact_state_is_the_definitions_bits_step_by_step(state_format, eps_placement):
    """Every step's codes, scales and rounded m are the NumPy definitions' bits from the optimizer's own previous
    state (on this backend, inside Keras's ``apply``), and the params follow within float32 rounding: variables of
    a block and a half, under one block, exactly one, and a scalar; gradients across 11 decades, so blocks
    re-base up, and zero gradients (an all-zero block included)."""
    rng = np.random.default_rng(3)
    shapes = [(3, 100), (7,), (256,), ()]
    variables = [keras.Variable(rng.standard_normal(shape).astype(np.float32)) for shape in shapes]
    opt = adamax_keras.Adamax(learning_rate=0.01, epsilon=1e-7, eps_placement=eps_placement, state_format=state_format)
    opt.build(variables)
    slots = opt._slots
    config = AdamaxConfig(lr=0.01, betas=(0.9, 0.999), eps=1e-7, eps_placement=eps_placement)
    rebased = 0
    for t in range(1, 16):
        grads = [(rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 4)).astype(np.float32) for shape in shapes]
        grads[0][1] = 0
        if t % 4 == 0:
            grads[2][:] = 0
        before = [_values([column[i] for column in slots]) for i in range(len(shapes))]
        params = _values(variables)
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        for i, g in enumerate(grads):
            state, want = _definition_step(state_format, before[i], params[i], g, t, config)
            after = _values([column[i] for column in slots])
            for got, expected in zip(after, state):
                got = got.astype(np.float32) if got.dtype.name == "bfloat16" else got
                np.testing.assert_array_equal(got.ravel(), np.asarray(expected).ravel(), err_msg=f"step {t}")
            rebased += int(np.any(after[-1] > np.float32(config.beta2) * before[i][-1] * 1.5))
            np.testing.assert_allclose(_values([variables[i]])[0].ravel(), want, rtol=2e-6, atol=1e-30)
    assert rebased >= 5  # the re-base path ran
    assert int(opt.iterations) == 15


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX backend's jitted step")
@pytest.mark.parametrize("state_format", ["compact", "compact8"])
def test_compact_state_under_jit_keeps_the_eager_steps_u_and_params_within_an_ulp(state_format):
    """``stateless_apply`` under ``jax.jit`` (what ``fit`` runs) stores the u codes and scales of the eager steps
    checked above, bit for bit.  m and the params may differ by an ulp in a few elements: under jit XLA fuses
    Keras's moment and step expressions and rounds them differently (it does so for ``keras.optimizers.Adamax``
    too: its jitted m differed from its eager m in 93 of a 300-element kernel's elements after these 6 steps)."""
    import jax

    rng = np.random.default_rng(4)
    shapes = ((3, 100), (7,))
    grads = [[rng.standard_normal(s).astype(np.float32) * 10.0 ** rng.integers(-6, 3) for s in shapes]
             for _ in range(6)]  # fmt: skip
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    eager_vars = [keras.Variable(p) for p in start]
    eager = adamax_keras.Adamax(learning_rate=0.01, state_format=state_format)
    eager.build(eager_vars)
    traced_vars = [keras.Variable(p) for p in start]
    traced = adamax_keras.Adamax(learning_rate=0.01, state_format=state_format)
    traced.build(traced_vars)
    step = jax.jit(traced.stateless_apply)
    params, state = [v.value for v in traced_vars], [v.value for v in traced.variables]
    for g in grads:
        eager.apply([keras.ops.convert_to_tensor(x) for x in g], eager_vars)
        params, state = step(state, [jax.numpy.asarray(x) for x in g], params)
    norm = [i for i, v in enumerate(eager.variables) if "_norm_" in v.name]
    assert len(norm) == 4
    _assert_same_bits([state[i] for i in norm], [eager.variables[i] for i in norm])
    for got, want in zip(_values(params), _values(eager_vars)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for got, want in zip(_values(state), _values(eager.variables)):
        assert np.mean(got.astype(np.float32) != want.astype(np.float32)) <= 0.02


@pytest.mark.parametrize(("state_format", "bytes_per_param"), [("compact", 4 + 4 / 256), ("compact8", 2 + 8 / 256)])
def test_compact_state_trains_as_full_state_does_in_its_bytes(state_format, bytes_per_param):
    """``model.fit`` (jitted on JAX) with compact state ends within 1% of full state's loss; the optimizer keeps
    ``bytes_per_param`` per parameter of a 256 x 256 kernel, and refuses nothing Keras gives it."""
    x, y = _data()
    losses = []
    for fmt in ("full", state_format):
        model = _fit(adamax_keras.Adamax(learning_rate=1e-2, state_format=fmt))
        losses.append(float(model.evaluate(x, y, verbose=0)))
    assert losses[1] < 0.1 * _model_loss(x, y)  # it trained
    assert abs(losses[1] - losses[0]) <= 0.01 * losses[0], losses
    big = keras.Variable(np.zeros((256, 256), np.float32))
    opt = adamax_keras.Adamax(state_format=state_format)
    opt.build([big])
    held = [v for v in opt.variables if v.name not in ("iteration", "learning_rate")]
    size = sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in held)
    assert size == bytes_per_param * 256 * 256


def test_an_embedding_model_trains_in_every_state_format_and_full_state_is_keras_own():
    """An ``Embedding``, whose gradients reach ``update_step`` on TensorFlow as ``IndexedSlices`` (which
    ``keras.ops`` densify): full state bit for bit as ``keras.optimizers.Adamax``; compact and compact8 state
    within 1% of its loss."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 500, (64, 4)), rng.standard_normal((64, 1)).astype("float32")

    def run(opt):
        keras.utils.set_random_seed(0)
        layers = [keras.Input((4,), dtype="int32"), keras.layers.Embedding(500, 8), keras.layers.Flatten()]
        model = keras.Sequential([*layers, keras.layers.Dense(1)])
        model.compile(optimizer=opt, loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history["loss"]
        return model, history

    theirs, _ = run(keras.optimizers.Adamax(learning_rate=1e-2))
    ours, full = run(adamax_keras.Adamax(learning_rate=1e-2))
    _assert_same_bits(ours.weights, theirs.weights)
    assert full[-1] < 0.9 * full[0]
    for state_format in ("compact", "compact8"):
        _, losses = run(adamax_keras.Adamax(learning_rate=1e-2, state_format=state_format))
        assert abs(losses[-1] - full[-1]) <= 0.01 * full[-1], (state_format, losses, full)


def test_the_defaults_are_keras_own():
    ours, theirs = adamax_keras.Adamax().get_config(), keras.optimizers.Adamax().get_config()
    for key in ("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay", "clipnorm", "clipvalue"):
        assert ours[key] == theirs[key], key
    assert ours["eps_placement"] == "denominator" and ours["state_format"] == "full"


@pytest.mark.parametrize("state_format", ["compact", "compact8"])
@pytest.mark.parametrize(("eps_placement", "eps"), [("denominator", 0.0), ("max", 0.0), ("denominator", 1e-7)])
def test_compact_state_with_no_eps_leaves_an_untouched_element_alone(state_format, eps_placement, eps):
    """An element whose every gradient is 0 has u = 0; with no ε (0, or a placement read from a configuration) it
    must not move (no 0/0), and the others must step as the definitions say (checked above)."""
    placement = json.loads(json.dumps(eps_placement))  # equal to the literal, not the same object
    opt = adamax_keras.Adamax(learning_rate=0.1, epsilon=eps, eps_placement=placement, state_format=state_format)
    x = keras.Variable(np.ones(4, dtype="float32"))
    for g in ([0.0, 1.0, -2.0, 0.5], [0.0, 0.3, 1.0, -0.5]):
        opt.apply([keras.ops.convert_to_tensor(np.array(g, dtype="float32"))], [x])
    got = _values([x])[0]
    assert got[0] == 1.0 and np.all(np.isfinite(got)) and np.all(got[1:] != 1.0)
    assert got[1] < 1.0 and got[3] < 1.0 and got[2] > 1.0  # moved against the gradients' signs


def _model_loss(x, y) -> float:
    model = _model()
    model.compile(loss="mse")
    return float(model.evaluate(x, y, verbose=0))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"beta_1": 1.5}, ValueError, "beta parameter at index 0"),
        ({"beta_2": -0.1}, ValueError, "beta parameter at index 1"),
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"learning_rate": -0.1}, ValueError, "learning rate"),
        ({"eps_placement": "outside"}, ValueError, "eps_placement"),
        ({"state_format": "half"}, ValueError, "state_format"),
        ({"skip_nonfinite": "yes"}, ValueError, "skip_nonfinite"),
    ],
)
def test_invalid_hyperparameters_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        adamax_keras.Adamax(**kwargs)


@pytest.mark.skipif(os.environ.get("ADAMAX_KERAS_OTHER_BACKEND") == "1", reason="already the other backend")
def test_these_tests_pass_on_the_torch_backend_too():
    pytest.importorskip("torch")
    other = "torch" if BACKEND != "torch" else "jax"
    processes.rerun_tests(__file__, {"KERAS_BACKEND": other, "ADAMAX_KERAS_OTHER_BACKEND": "1"})

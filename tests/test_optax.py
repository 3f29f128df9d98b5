"""adamax.optax against optax itself, and with what optax users combine it with."""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest

from tests import processes

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from adamax.optax import ScaleByAdamaxState, adamax, adamaxw, scale_by_adamax  # noqa: E402


def mlp_params(dtype=jnp.float32, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "hidden": {"w": jax.random.normal(k1, (5, 16), dtype) * 0.3, "b": jnp.zeros(16, dtype)},
        "out": {"w": jax.random.normal(k2, (16, 3), dtype) * 0.3, "b": jnp.zeros(3, dtype)},
    }


def mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return jnp.mean((h @ params["out"]["w"] + params["out"]["b"] - y) ** 2)


def batch(i, dtype=jnp.float32):
    return (
        jax.random.normal(jax.random.PRNGKey(i + 1), (32, 5), dtype),
        jax.random.normal(jax.random.PRNGKey(i + 1000), (32, 3), dtype),
    )


def jitted_step(opt):
    @jax.jit
    def step(params, state, x, y):
        grads = jax.grad(mlp_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return step


def assert_trees_equal(a, b, what=""):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


def run_side_by_side(ours, theirs, steps=200, dtype=jnp.float32):
    params_a = params_b = mlp_params(dtype)
    state_a, state_b = ours.init(params_a), theirs.init(params_b)
    step_a, step_b = jitted_step(ours), jitted_step(theirs)
    for i in range(steps):
        x, y = batch(i, dtype)
        params_a, state_a, updates_a = step_a(params_a, state_a, x, y)
        params_b, state_b, updates_b = step_b(params_b, state_b, x, y)
        assert_trees_equal(updates_a, updates_b, f"updates at step {i + 1}")
    assert_trees_equal(params_a, params_b, "params")
    return state_a, state_b


PAIRS = {
    "adamax": (lambda: adamax(1e-2), lambda: optax.adamax(1e-2)),
    "adamax b1=0.5 eps=1e-3": (lambda: adamax(3e-3, b1=0.5, eps=1e-3), lambda: optax.adamax(3e-3, b1=0.5, eps=1e-3)),
    "adamax schedule": (
        lambda: adamax(optax.cosine_decay_schedule(1e-2, 200)),
        lambda: optax.adamax(optax.cosine_decay_schedule(1e-2, 200)),
    ),
    "adamaxw": (lambda: adamaxw(1e-2, weight_decay=0.05), lambda: optax.adamaxw(1e-2, weight_decay=0.05)),
    "adamaxw mask": (
        lambda: adamaxw(1e-2, weight_decay=0.05, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        lambda: optax.adamaxw(1e-2, weight_decay=0.05, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    ),
    "chain with clipping": (
        lambda: optax.chain(optax.clip_by_global_norm(0.1), adamax(1e-2)),
        lambda: optax.chain(optax.clip_by_global_norm(0.1), optax.adamax(1e-2)),
    ),
    "MultiSteps": (
        lambda: optax.MultiSteps(adamax(1e-2), every_k_schedule=3),
        lambda: optax.MultiSteps(optax.adamax(1e-2), every_k_schedule=3),
    ),
}


@pytest.mark.parametrize("name", PAIRS)
def test_bit_exact_with_optax_over_200_jitted_steps(name):
    ours, theirs = (make() for make in PAIRS[name])
    run_side_by_side(ours, theirs)


def test_eager_updates_are_bit_exact_too():
    ours, theirs = adamax(1e-2), optax.adamax(1e-2)
    params = mlp_params()
    state_a, state_b = ours.init(params), theirs.init(params)
    for i in range(5):
        grads = jax.grad(mlp_loss)(params, *batch(i))
        updates_a, state_a = ours.update(grads, state_a, params)
        updates_b, state_b = theirs.update(grads, state_b, params)
        assert_trees_equal(updates_a, updates_b, f"eager step {i + 1}")


def test_state_matches_optax_and_counts_globally():
    state_a, state_b = run_side_by_side(adamax(1e-2), optax.adamax(1e-2), steps=20)
    ours, theirs = state_a[0], state_b[0]
    assert isinstance(ours, ScaleByAdamaxState) and ours._fields == ("count", "m", "u")
    assert int(ours.count) == 20 and ours.count.dtype == jnp.int32
    assert_trees_equal(ours.m, theirs.mu)
    assert_trees_equal(ours.u, theirs.nu)


def test_inject_hyperparams_equals_the_plain_version():
    """Injected hyperparameters are float32 arrays, so (1 - b1) and friends round in float32, not float64:
    optax's own injected adamax differs from its plain one by a few ulps.  Ours is bit-exact with optax's
    injected version, and within 1e-6 of the plain one."""
    injected = optax.inject_hyperparams(adamax)(learning_rate=1e-2, b1=0.9, b2=0.999)
    run_side_by_side(injected, optax.inject_hyperparams(optax.adamax)(learning_rate=1e-2, b1=0.9, b2=0.999))
    params_a = params_b = mlp_params()
    plain = adamax(1e-2)
    state_a, state_b = injected.init(params_a), plain.init(params_b)
    step_a, step_b = jitted_step(injected), jitted_step(plain)
    for i in range(50):
        x, y = batch(i)
        _, state_a, updates_a = step_a(params_a, state_a, x, y)
        _, state_b, updates_b = step_b(params_b, state_b, x, y)  # same params: compare one step at a time
        for a, b in zip(jax.tree.leaves(updates_a), jax.tree.leaves(updates_b)):
            scale = float(jnp.abs(b).max())  # (1 - b1) g + b1 m cancels in small entries: relative to the leaf
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6 * scale)
    state = injected.init(mlp_params())
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)  # a zero learning rate freezes the params
    updates, _ = jax.jit(injected.update)(jax.grad(mlp_loss)(mlp_params(), *batch(0)), state)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates))


def test_apply_if_finite_skips_a_nan_batch():
    ours = optax.apply_if_finite(adamax(1e-2), max_consecutive_errors=3)
    theirs = optax.apply_if_finite(optax.adamax(1e-2), max_consecutive_errors=3)
    params = mlp_params()
    state_a, state_b = ours.init(params), theirs.init(params)
    grads = jax.grad(mlp_loss)(params, *batch(0))
    bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    for g in (grads, bad, grads):
        updates_a, state_a = jax.jit(ours.update)(g, state_a, params)
        updates_b, state_b = jax.jit(theirs.update)(g, state_b, params)
        assert_trees_equal(updates_a, updates_b)
        assert all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(updates_a))
    assert int(state_a.total_notfinite) == 1
    assert int(state_a.inner_state[0].count) == 2  # the NaN step left the inner state alone


def test_jit_compiles_once_and_donates():
    opt = adamax(1e-2)
    params = mlp_params()
    init = jax.jit(opt.init)
    state = init(params)
    init(params)
    assert init._cache_size() == 1

    @jax.jit
    def update(grads, state, params):
        return opt.update(grads, state, params)

    grads = jax.grad(mlp_loss)(params, *batch(0))
    for _ in range(3):
        _, state = update(grads, state, params)
    assert update._cache_size() == 1

    def train_step(params, state, x, y):
        grads = jax.grad(mlp_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    donating = jax.jit(train_step, donate_argnums=(0, 1))
    new_params, new_state = donating(params, state, *batch(1))
    assert all(x.is_deleted() for x in jax.tree.leaves((params, state)))
    assert not any(x.is_deleted() for x in jax.tree.leaves((new_params, new_state)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.complex64], ids=lambda d: jnp.dtype(d).name)
def test_update_dtype_follows_the_gradient(dtype):
    opt = adamax(1e-2)
    params = {"a": jnp.ones((3, 2), dtype), "b": jnp.ones(4, dtype)}
    state = opt.init(params)
    grads = jax.tree.map(lambda p: (p * 0.5 - 0.25).astype(dtype), params)
    updates, state = jax.jit(opt.update)(grads, state)
    for u, s_m, s_u in zip(jax.tree.leaves(updates), jax.tree.leaves(state[0].m), jax.tree.leaves(state[0].u)):
        assert u.dtype == s_m.dtype == s_u.dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
def test_eps_placements_follow_the_reference(placement):
    from adamax import reference
    from adamax.spec import AdamaxConfig

    rng = np.random.default_rng(0)
    config = AdamaxConfig(lr=0.01, eps=1e-3, eps_placement=placement)
    opt = adamax(0.01, eps=1e-3, eps_placement=placement)
    p = rng.standard_normal(50).astype(np.float32)
    p[0] = 0.0
    params, state = jnp.asarray(p), opt.init(jnp.asarray(p))
    ref_p, ref_state = p, reference.init(p)
    for _ in range(10):
        g = rng.standard_normal(50).astype(np.float32)
        g[0] = 0.0  # u stays 0 there: "none" must not divide 0 by 0
        updates, state = jax.jit(opt.update)(jnp.asarray(g), state)
        params = optax.apply_updates(params, updates)
        ref_p, ref_state = reference.update(ref_p, g, ref_state, config)
        # optax's rounding order differs from torch's (which the reference follows): a few ulps
        np.testing.assert_allclose(np.asarray(params), ref_p, rtol=2e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(state[0].u), ref_state.exp_inf)
    assert np.isfinite(np.asarray(params)).all()


def minimise(loss, dtype, lr, steps):
    opt = adamax(lr)
    params = jnp.zeros(2, dtype)
    state = opt.init(params)

    def body(carry, _):
        params, state = carry
        grads = jnp.conj(jax.grad(loss)(params))  # descent direction for complex params, as optax's tests take it
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, state), None, length=steps)
    return params


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=lambda d: jnp.dtype(d).name)
def test_converges_on_a_quadratic_and_on_rosenbrock(dtype):
    target = jnp.array([1.0, -1.0])
    quadratic = minimise(lambda z: jnp.sum(jnp.abs(z - target) ** 2), dtype, 0.1, 2000)
    np.testing.assert_allclose(np.asarray(quadratic), np.asarray(target), atol=3e-2)
    rosenbrock = minimise(lambda z: jnp.abs(1 - z[0]) ** 2 + 100 * jnp.abs(z[1] - z[0] ** 2) ** 2, dtype, 0.02, 10000)
    np.testing.assert_allclose(np.asarray(rosenbrock), [1.0, 1.0], atol=3e-2)


INVALID = [
    (lambda: adamax(-1.0), ValueError, r"^Invalid learning rate: -1\.0$"),
    (lambda: adamax(1e-3, b1=1.5), ValueError, r"^Invalid beta parameter at index 0: 1\.5$"),
    (lambda: adamax(1e-3, b2=-0.1), ValueError, r"^Invalid beta parameter at index 1: -0\.1$"),
    (lambda: adamax(1e-3, eps=-1e-8), ValueError, r"^Invalid epsilon value: -1e-08$"),
    (lambda: adamax(float("nan")), ValueError, r"^Invalid learning rate: nan$"),
    (lambda: adamax("0.1"), TypeError, r"Invalid learning rate: '0\.1'"),
    (lambda: adamax(jnp.array(-0.5)), ValueError, r"^Invalid learning rate: -0\.5$"),
    (lambda: adamax(1e-3, eps_placement="after"), ValueError, r"Invalid eps_placement: 'after'"),
    (lambda: scale_by_adamax(b1=1.0), ValueError, r"^Invalid beta parameter at index 0: 1\.0$"),
    (lambda: adamaxw(1e-3, weight_decay=-1e-4), ValueError, r"^Invalid weight_decay value: -0\.0001$"),
]


@pytest.mark.parametrize(("make", "error", "message"), INVALID)
def test_invalid_hyperparameters_raise_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_what_optax_takes_and_steps_wrongly_with_we_refuse():
    """A negative learning rate: optax's step goes uphill.  b2 > 1: optax's u grows 1.5x a step under a constant
    gradient, so its steps shrink to nothing.  Ours refuses both at construction."""
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.ones(3)}  # the gradient of sum(w): downhill is negative
    uphill = optax.adamax(-1.0)
    updates, _ = uphill.update(grads, uphill.init(params))
    assert bool(jnp.all(updates["w"] > 0))
    with pytest.raises(ValueError, match="Invalid learning rate"):
        adamax(-1.0)
    growing = optax.adamax(1e-3, b2=1.5)
    state = growing.init(params)
    sizes = []
    for _ in range(30):
        updates, state = growing.update(grads, state)
        sizes.append(float(jnp.abs(updates["w"][0])))
    assert sizes[-1] < sizes[0] * 1e-4
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        adamax(1e-3, b2=1.5)


def run_python(code: str, **env: str) -> str:
    result = processes.run([sys.executable, "-c", textwrap.dedent(code)], env={**os.environ, **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_float64_is_exact_with_optax():
    out = run_python(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from tests.test_optax import run_side_by_side, PAIRS
        assert jnp.zeros(1).dtype == jnp.float64
        for name in ("adamax", "adamaxw"):
            ours, theirs = (make() for make in PAIRS[name])
            state, _ = run_side_by_side(ours, theirs, steps=100, dtype=jnp.float64)
            assert jax.tree.leaves(state)[1].dtype == jnp.float64
        params = {"w": jnp.ones(3, jnp.float64)}
        from adamax.optax import adamax
        updates, _ = adamax(0.1).update({"w": jnp.ones(3)}, adamax(0.1).init(params))
        assert updates["w"].dtype == jnp.float64
        print("exact")
        """,
        JAX_ENABLE_X64="1",
    )
    assert out.strip() == "exact"


def test_state_keeps_the_sharding_of_params_over_two_devices():
    out = run_python(
        """
        import jax, jax.numpy as jnp, numpy as np, optax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from adamax.optax import adamax
        assert len(jax.devices()) == 2, jax.devices()
        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        key = jax.random.PRNGKey(0)
        params = {"w": jax.random.normal(key, (8, 4)), "b": jnp.zeros(4)}
        sharded = {"w": jax.device_put(params["w"], rows), "b": jax.device_put(params["b"], replicated)}
        opt = adamax(1e-2)
        loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

        @jax.jit
        def step(p, s, x):
            updates, s = opt.update(jax.grad(loss)(p, x), s, p)
            return optax.apply_updates(p, updates), s

        def run(p):
            s = jax.jit(opt.init)(p)
            for i in range(20):
                p, s = step(p, s, jax.random.normal(jax.random.PRNGKey(i), (5, 8)))
            return p, s

        p_sharded, s_sharded = run(sharded)
        p_plain, _ = run(params)
        for tree in (s_sharded[0].m, s_sharded[0].u, p_sharded):
            assert tree["w"].sharding.is_equivalent_to(rows, 2), tree["w"].sharding
            assert tree["b"].sharding.is_equivalent_to(replicated, 1), tree["b"].sharding
        assert len(s_sharded[0].m["w"].addressable_shards) == 2
        assert s_sharded[0].m["w"].addressable_shards[0].data.shape == (4, 4)
        for a, b in zip(jax.tree.leaves(p_sharded), jax.tree.leaves(p_plain)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        print("sharded")
        """,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert out.strip() == "sharded"

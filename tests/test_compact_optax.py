"""adamax.optax with state_format="compact": u's codes as adamax.compact computes them, the direction within the
state's rounding of the full state's, conversions, and training."""

from __future__ import annotations

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from adamax import compact, compact8  # noqa: E402
from adamax.optax import (  # noqa: E402
    ScaleByAdamaxCompact8State,
    ScaleByAdamaxCompactState,
    ScaleByAdamaxState,
    adamax,
    adamaxw,
    convert_state,
    scale_by_adamax,
)
from adamax.spec import AdamaxConfig  # noqa: E402

PARAMS = {"a": jnp.zeros((300, 7)), "b": jnp.zeros(5)}


def gradients(rng, t):
    return {
        k: jnp.asarray(rng.standard_normal(v.shape) * (100 if t == 3 else 1) * (rng.random(v.shape) > 0.2)).astype(
            jnp.float32
        )
        for k, v in PARAMS.items()
    }


@pytest.mark.parametrize(("placement", "eps"), [("max", 1e-8), ("denominator", 1e-3), ("none", 1e-8)])
def test_codes_and_scales_are_the_definitions_and_the_direction_is_within_rounding(placement, eps):
    tx, full = (
        scale_by_adamax(eps=eps, eps_placement=placement, state_format="compact"),
        scale_by_adamax(eps=eps, eps_placement=placement),
    )
    state, full_state = tx.init(PARAMS), full.init(PARAMS)
    assert isinstance(state, ScaleByAdamaxCompactState)
    reference = {k: compact.init(np.zeros(v.shape, np.float32)) for k, v in PARAMS.items()}
    config = AdamaxConfig(eps=eps, eps_placement=placement)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    for t in range(30):
        g = gradients(rng, t)
        direction, state = update(g, state)
        full_direction, full_state = full.update(g, full_state)
        for k in PARAMS:
            zero = np.zeros(PARAMS[k].shape, np.float32)
            _, reference[k] = compact.update(zero, np.asarray(g[k]), reference[k], config)
            assert np.array_equal(np.asarray(state.code[k]), reference[k].exp_inf_code)
            assert np.array_equal(np.asarray(state.m[k]).view(np.uint16), reference[k].exp_avg)  # the same hash
            assert np.array_equal(np.asarray(state.scale[k]), reference[k].exp_inf_scale)
            # bfloat16 m (8 bits) and the coded u: within a few percent of the direction's scale
            a, b = np.asarray(direction[k]), np.asarray(full_direction[k])
            assert np.max(np.abs(a - b)) <= 0.03 * np.max(np.abs(b)) + 1e-30
    assert int(state.count) == 30


def test_an_eps_that_rounds_to_zero_in_float32_divides_as_optax_does():
    """eps = 1e-50 is positive, so no guard is chosen, but it is 0 in float32: an element whose gradient has been 0
    has u = 0 and m = 0, and its direction is 0 / 0, NaN, in optax's adamax and in the compact state's alike."""
    g = {"a": jnp.asarray([0.0, 1.0, -2.0, 0.5], jnp.float32)}
    directions = []
    for tx in (optax.scale_by_adamax(eps=1e-50), scale_by_adamax(eps=1e-50, state_format="compact")):
        state = tx.init({"a": jnp.zeros(4)})
        for _ in range(2):
            direction, state = tx.update(g, state)
        directions.append(np.asarray(direction["a"]))
    theirs, ours = directions
    assert np.isnan(theirs[0]) and np.isnan(ours[0]) and not np.isnan(ours[1:]).any()
    np.testing.assert_allclose(ours[1:], theirs[1:], rtol=0.03)  # the state's rounding


def one_step_both_ways(placement, grad, codes, scale, b2=0.999):
    """One update of a leaf in state ``(codes, scale)`` (m = 0, count 1) by the compact optax transform and by the
    definition, :func:`adamax.compact.update`; returns both new (codes, scales)."""
    tx = scale_by_adamax(b2=b2, eps_placement=placement, state_format="compact")
    state = tx.init({"a": jnp.zeros(grad.shape)})
    state = state._replace(
        count=jnp.asarray(1, jnp.int32), code={"a": jnp.asarray(codes)}, scale={"a": jnp.asarray(scale)}
    )
    _, new = jax.jit(tx.update)({"a": jnp.asarray(grad)}, state)
    leaf = compact.CompactState(1, np.zeros(grad.shape, np.uint16), codes, scale)
    config = AdamaxConfig(betas=(0.9, b2), eps_placement=placement)
    _, definition = compact.update(np.zeros_like(grad), grad, leaf, config)
    return (np.asarray(new.code["a"]), np.asarray(new.scale["a"])), (definition.exp_inf_code, definition.exp_inf_scale)


def test_a_scale_moved_up_to_the_largest_float32_stays_finite_as_in_the_definition():
    """A block's scale re-based by ``2**k`` onto exactly the largest float32 (a significand of all ones, a peak
    near 2**128): finite in the definition, and in the transform."""
    scale = np.uint32(0x3FFFFFFF).view(np.float32)  # just below 2: every significand bit set; b2 = 0.5 halves it
    grad = np.array([3e38, 0.0, 1e30, 0.0, 0.0], np.float32)
    codes = np.full(5, compact.ONE - 7, np.uint16)
    ours, definition = one_step_both_ways("max", grad, codes, np.array([scale], np.float32), b2=0.5)
    assert definition[1][0] == np.finfo(np.float32).max
    for a, b in zip(ours, definition):
        assert np.array_equal(a, b)


def test_a_scale_of_exactly_the_smallest_normal_float32_is_re_based_as_in_the_definition():
    """A scale decayed onto 2**-126 exactly (the least normal float32, TINY): re-based up, codes and all, as any
    normal scale; only a smaller one counts as zero."""
    grad = np.array([1.0, 0.0, 0.0], np.float32)
    codes = np.array([compact.ONE, 3000, 40000], np.uint16)
    ours, definition = one_step_both_ways("none", grad, codes, np.array([2.0**-125], np.float32), b2=0.5)
    assert definition[0][2] != 0
    for a, b in zip(ours, definition):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("placement", ["denominator", "none"])
def test_codes_shifted_below_the_smallest_stay_the_smallest_as_in_the_definition(placement):
    """A block re-based up by ``2**k``, ``k >= 1``: codes below ``k << 10`` would fall below the smallest value
    (2**-63 of the scale); they stay at the smallest code, not at zero, where no gradient raises them (eps outside
    the max)."""
    grad = np.array([4.0, 0.0, 0.0, 0.0], np.float32)
    codes = np.array([compact.ONE, 5, 1024, 2000], np.uint16)
    ours, definition = one_step_both_ways(placement, grad, codes, np.array([1.0], np.float32))
    assert list(definition[0][1:3]) == [1, 1]
    for a, b in zip(ours, definition):
        assert np.array_equal(a, b)


def test_convert_state_is_exact_to_full_and_rounds_up_to_compact():
    tx = adamax(1e-2, state_format="compact")
    state = tx.init(PARAMS)
    rng = np.random.default_rng(1)
    for t in range(10):
        _, state = tx.update(gradients(rng, t), state)
    full = convert_state(state, json.loads('"full"'))  # a format read from a configuration: equal, not the literal
    assert isinstance(full[0], ScaleByAdamaxState) and int(full[0].count) == 10
    for k in PARAMS:
        leaf = compact.CompactState(
            0, np.asarray(state[0].m[k]).view(np.uint16), np.asarray(state[0].code[k]), np.asarray(state[0].scale[k])
        )
        _, m, u = compact.to_full(leaf)
        assert np.array_equal(np.asarray(full[0].m[k]), m) and np.array_equal(np.asarray(full[0].u[k]), u)
    back = convert_state(full, json.loads('"compact"'))
    assert isinstance(back[0], ScaleByAdamaxCompactState)
    for k in PARAMS:
        assert np.array_equal(np.asarray(back[0].m[k]), np.asarray(state[0].m[k]))
        u = np.asarray(full[0].u[k])
        again = compact.to_full(
            compact.CompactState(0, np.asarray(back[0].m[k]).view(np.uint16), np.asarray(back[0].code[k]),
                                 np.asarray(back[0].scale[k]))
        )[2]  # fmt: skip
        assert np.all(again >= u * (1 - 2**-22)) and np.all(again <= u * compact.RATIO * (1 + 2**-21))  # up a code
    # a full optax state converts and trains on
    theirs = optax.adamax(1e-2)
    their_state = theirs.init(PARAMS)
    _, their_state = theirs.update(gradients(rng, 0), their_state)
    ours = convert_state((ScaleByAdamaxState(*their_state[0]), their_state[1]), "compact")
    _, ours = tx.update(gradients(rng, 1), ours)
    assert int(ours[0].count) == 2


def regression_loss(state_format: str, make=adamax) -> float:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((256, 30)), jnp.float32)
    truth = rng.standard_normal((30, 1)) / np.sqrt(30)
    y = jnp.asarray(np.sin(3 * np.asarray(x) @ truth) + 0.1 * rng.standard_normal((256, 1)), jnp.float32)
    params = {"w1": jnp.asarray(rng.standard_normal((30, 8)) * 0.2, jnp.float32), "w2": jnp.zeros((8, 1))}

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    tx = make(3e-3, state_format=state_format)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(400):
        params, state = step(params, state)
    return float(loss(params))


@pytest.mark.parametrize("make", [adamax, adamaxw])
def test_compact_state_trains_within_one_percent_of_full_state(make):
    assert regression_loss("compact", make) == pytest.approx(regression_loss("full", make), rel=0.01)


@pytest.mark.parametrize("make", [adamax, adamaxw])
def test_compact8_state_trains_between_full_state_at_the_rate_and_at_the_rate_less_one_code(make):
    """Full-batch regression, where a step's rate shows in the loss at 400 steps: compact8's u rounds up by at most
    a code (3.1% near a block's largest u), so it lands between full state at the rate and at the rate divided
    by ``1 + 2**-5``."""

    def slower(learning_rate, state_format):
        return make(learning_rate / (1 + 2**-5), state_format=state_format)

    assert regression_loss("full", make) < regression_loss("compact8", make) < regression_loss("full", slower)


def test_what_compact_state_cannot_take_is_refused():
    with pytest.raises(ValueError, match="Invalid state_format"):
        scale_by_adamax(state_format="half")
    with pytest.raises(TypeError, match="real float params"):
        scale_by_adamax(state_format="compact").init({"n": jnp.zeros(3, jnp.int32)})


@pytest.mark.parametrize("state_format", ["full", "compact", "compact8"])
@pytest.mark.parametrize("wrap", ["adamax", "adamaxw"])
def test_a_tree_with_none_leaves_steps_as_optax_does(state_format, wrap):
    """A masked or frozen part of a model is a ``None`` leaf in params and gradients (an empty subtree to JAX):
    both transforms take it, leave it None, and step the rest as optax.adamax does (compact: within its
    rounding)."""
    params = {"a": jnp.linspace(-1.0, 1.0, 300), "frozen": None, "b": [jnp.ones(5), None]}
    ours = (adamax if wrap == "adamax" else adamaxw)(0.01, state_format=state_format)
    theirs = optax.adamax(0.01) if wrap == "adamax" else optax.adamaxw(0.01)
    state, their_state = ours.init(params), theirs.init(params)
    p, q = params, params
    rng = np.random.default_rng(3)
    for _ in range(5):
        g = {"a": jnp.asarray(rng.standard_normal(300), jnp.float32), "frozen": None,
             "b": [jnp.asarray(rng.standard_normal(5), jnp.float32), None]}  # fmt: skip
        updates, state = jax.jit(ours.update)(g, state, p)
        their_updates, their_state = jax.jit(theirs.update)(g, their_state, q)
        assert updates["frozen"] is None and updates["b"][1] is None
        p, q = optax.apply_updates(p, updates), optax.apply_updates(q, their_updates)
    for mine, other in zip(jax.tree.leaves(p), jax.tree.leaves(q)):
        if state_format == "full":
            np.testing.assert_array_equal(np.asarray(mine), np.asarray(other))
        else:  # five steps of lr 0.01, each direction within a few percent of the full state's
            np.testing.assert_allclose(np.asarray(mine), np.asarray(other), rtol=0, atol=5 * 0.01 * 0.05)


# ----- compact8 -----


def _leaf(state, k):
    return compact8.Compact8State(0, *(np.asarray(tree[k]) for tree in state[1:]))


def _m_from_codes(state, k):
    return compact8.decode_m(np.asarray(state.m_code[k]), np.asarray(state.m_scale[k])).reshape(PARAMS[k].shape)


@pytest.mark.parametrize(("placement", "eps"), [("max", 1e-8), ("denominator", 1e-3), ("none", 1e-8)])
def test_compact8_u_is_the_definitions_and_m_and_the_direction_within_its_rounding(placement, eps):
    """u's codes and scales are the definition's bit for bit (u does not depend on m); m is computed in optax's
    form, so it may differ from the definition's by a float32 rounding, and its scale and codes then by a little:
    m within two codes of the definition's.  The direction stays near the full state's on average (the two
    states part by the rounding; an element far below its block's largest m is noisy)."""
    tx = scale_by_adamax(eps=eps, eps_placement=placement, state_format="compact8")
    full = scale_by_adamax(eps=eps, eps_placement=placement)
    state, full_state = tx.init(PARAMS), full.init(PARAMS)
    assert isinstance(state, ScaleByAdamaxCompact8State)
    reference = {k: compact8.init(np.zeros(v.shape, np.float32)) for k, v in PARAMS.items()}
    config = AdamaxConfig(eps=eps, eps_placement=placement)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(0)
    for t in range(30):
        g = gradients(rng, t)
        direction, state = update(g, state)
        full_direction, full_state = full.update(g, full_state)
        for k in PARAMS:
            zero = np.zeros(PARAMS[k].shape, np.float32)
            _, reference[k] = compact8.update(zero, np.asarray(g[k]), reference[k], config)
            assert np.array_equal(np.asarray(state.code[k]), reference[k].exp_inf_code)
            assert np.array_equal(np.asarray(state.scale[k]), reference[k].exp_inf_scale)
            np.testing.assert_allclose(np.asarray(state.m_scale[k]), reference[k].exp_avg_scale, rtol=1e-6)
            ours = _m_from_codes(state, k)
            definition = compact8.to_full(reference[k])[1]
            scale = compact._per_element(reference[k].exp_avg_scale, ours.size).reshape(ours.shape)
            assert np.all(np.abs(ours - definition) <= np.abs(definition) * 2.0**-3 + 2 * scale * compact8.SMALLEST_M)
            a, b = np.asarray(direction[k]), np.asarray(full_direction[k])
            assert np.mean(np.abs(a - b)) <= 0.15 * np.mean(np.abs(b)) + 1e-30
    assert int(state.count) == 30


def test_convert_state_moves_between_all_three_formats():
    tx = adamax(1e-2, state_format="compact8")
    state = tx.init(PARAMS)
    rng = np.random.default_rng(2)
    for t in range(8):
        _, state = tx.update(gradients(rng, t), state)
    full = convert_state(state, "full")
    assert isinstance(full[0], ScaleByAdamaxState) and int(full[0].count) == 8
    for k in PARAMS:
        _, m, u = compact8.to_full(_leaf(state[0], k))
        assert np.array_equal(np.asarray(full[0].m[k]), m) and np.array_equal(np.asarray(full[0].u[k]), u)
    small = convert_state(state, "compact")
    assert isinstance(small[0], ScaleByAdamaxCompactState)
    back = convert_state(small, "compact8")
    assert isinstance(back[0], ScaleByAdamaxCompact8State)
    for k in PARAMS:
        u = np.asarray(full[0].u[k])
        again = compact8.to_full(_leaf(back[0], k))
        assert np.all(again[2] >= u * (1 - 2**-22)) and np.all(again[2] <= u * compact8.RATIO**2 * (1 + 2**-21))
        assert np.allclose(again[1], np.asarray(full[0].m[k]), rtol=0.07, atol=1e-6)
    _, stepped = tx.update(gradients(rng, 9), back)
    assert int(stepped[0].count) == 9

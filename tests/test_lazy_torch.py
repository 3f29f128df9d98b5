"""adamax.torch.lazy_embeddings: sparse embeddings stepped lazily, against dense adamax.torch.Adamax."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adamax.torch import Adamax, lazy_embeddings  # noqa: E402

VOCAB, DIM = 80, 4


class Model(torch.nn.Module):
    def __init__(self, sparse: bool, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.words = torch.nn.Embedding(VOCAB, DIM, sparse=sparse)
        self.bag = torch.nn.EmbeddingBag(VOCAB, DIM, mode="sum", sparse=sparse)
        self.head = torch.nn.Sequential(torch.nn.Linear(4 * DIM, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.to(dtype)

    def forward(self, words: torch.Tensor, bag: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.words(words).flatten(1), self.bag(bag)], dim=1))


def batch(rng: np.random.Generator, step: int, dtype: torch.dtype):
    """Row 0 never looked up; row 1 every step; the rest skewed (some rows often, most rarely)."""
    words = np.minimum(rng.zipf(1.6, size=(6, 3)), VOCAB - 1)
    words[:, 0] = 1
    bag = rng.integers(2, VOCAB, size=(6, 4)) if step % 7 else rng.integers(2, 6, size=(6, 4))
    target = torch.from_numpy(rng.standard_normal((6, 1))).to(dtype)
    return torch.from_numpy(words), torch.from_numpy(bag), target


def scale_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def run(dtype=torch.float64, steps=120, seed=0, huge_pages=True, **options):
    """Lazy and dense side by side; the worst scaled error at every read through the hooks, and at flushes."""
    lazy_model, dense_model = Model(True, dtype), Model(False, dtype)
    lazy = Adamax(lazy_model.parameters(), lr=2e-2, **options)
    dense = Adamax(dense_model.parameters(), lr=2e-2, **options)
    assert lazy_embeddings(lazy_model, lazy, huge_pages=huge_pages) == [lazy_model.words, lazy_model.bag]
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1 / (1 + s / 30)) for o in (lazy, dense)]
    rng = np.random.default_rng(seed)
    worst = 0.0
    for step in range(steps):
        words, bag, target = batch(rng, step, dtype)
        losses = []
        for model, opt in ((lazy_model, lazy), (dense_model, dense)):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(words, bag), target)  # the hooks run here
            loss.backward()
            losses.append(loss)
        rows = torch.unique(words)
        worst = max(worst, scale_error(lazy_model.words.weight[rows], dense_model.words.weight[rows]))
        worst = max(worst, scale_error(losses[0].detach(), losses[1].detach()))
        lazy.step()
        dense.step()
        for schedule in schedules:
            schedule.step()
        if step % 40 == 39:
            lazy_sd, dense_sd = lazy.state_dict(), dense.state_dict()  # brings every row up to date
            for a, b in zip(lazy_model.parameters(), dense_model.parameters()):
                worst = max(worst, scale_error(a.detach(), b.detach()))
            for key, entry in dense_sd["state"].items():
                for name in ("exp_avg", "exp_inf"):
                    worst = max(worst, scale_error(lazy_sd["state"][key][name], entry[name]))
                assert int(lazy_sd["state"][key]["step"]) == int(entry["step"])
    assert lazy.last_step_paths.get("lazy") == 2
    return worst, lazy_model, lazy, dense_model, dense


@pytest.mark.parametrize("placement", ["max", "denominator", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.05, "decoupled_weight_decay": True},
        {"maximize": True},
        {"betas": (0.5, 0.9), "weight_decay": 0.05, "decoupled_weight_decay": True},  # a 71-step window
    ],
    ids=["plain", "decoupled-decay", "maximize", "short-window"],
)
def test_lazy_embeddings_equal_dense_adamax_in_float64(placement, options):
    worst, *_ = run(eps_placement=placement, eps=1e-3 if placement != "max" else 1e-8, **options)
    assert worst < 1e-12


def test_lazy_embeddings_in_float32_stay_within_the_stated_bound():
    worst, *_ = run(dtype=torch.float32, weight_decay=0.05, decoupled_weight_decay=True)
    assert worst < 4e-6


def test_state_dict_loads_into_torch_and_a_torch_checkpoint_resumes_lazily():
    _, _, lazy, dense_model, dense = run(steps=30)
    saved = lazy.state_dict()
    theirs = torch.optim.Adamax(copy.deepcopy(dense_model).parameters(), lr=2e-2)
    theirs.load_state_dict(copy.deepcopy(saved))  # torch takes it as it is
    # and a torch checkpoint resumes in a lazy optimizer: continue both from dense's state
    resumed_model = Model(True, torch.float64)
    resumed_model.load_state_dict({k: v for k, v in dense_model.state_dict().items()})
    resumed = Adamax(resumed_model.parameters(), lr=2e-2)
    lazy_embeddings(resumed_model, resumed)
    resumed.load_state_dict(copy.deepcopy(dense.state_dict()))
    rng = np.random.default_rng(9)
    for step in range(30):
        words, bag, target = batch(rng, step, torch.float64)
        for model, opt in ((resumed_model, resumed), (dense_model, dense)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(words, bag), target).backward()
            opt.step()
    model_state = resumed_model.state_dict()  # the modules' own state_dict brings their rows up to date
    for key, value in dense_model.state_dict().items():
        assert scale_error(model_state[key], value) < 1e-12, key


def test_huge_pages_move_the_tables_not_their_values(monkeypatch):
    from adamax import _memory

    monkeypatch.setattr(_memory, "MIN_BYTES", 0)  # the test's small tables take the huge-page path
    _, plain_model, plain, *_ = run(steps=50, huge_pages=False)
    _, huge_model, huge, *_ = run(steps=50, huge_pages=True)
    assert all(a is b for a, b in zip(huge_model.parameters(), huge.param_groups[0]["params"]))  # same objects
    for a, b in zip(huge_model.parameters(), plain_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(huge.state.values(), plain.state.values()):
        assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_inf"))

    def on_huge_pages(p):
        state, table = huge.state[p], huge._lazy.tables[p]
        addresses = [t.data_ptr() for t in (p, state["exp_avg"], state["exp_inf"])] + [table.last.ctypes.data]
        return all(address % _memory.HUGE_PAGE == 0 for address in addresses)

    if not _memory.available():
        pytest.skip("this OS does not take the huge-page hint; the values matched")
    tables = [huge_model.words.weight, huge_model.bag.weight]
    assert all(on_huge_pages(p) for p in tables)
    huge.load_state_dict(copy.deepcopy(huge.state_dict()))  # new state tensors, on ordinary pages: they move
    assert all(on_huge_pages(p) for p in tables)


def test_a_param_that_sits_out_keeps_its_own_step_count():
    lazy_model, dense_model = Model(True, torch.float64), Model(False, torch.float64)
    lazy, dense = Adamax(lazy_model.parameters(), lr=0.05), Adamax(dense_model.parameters(), lr=0.05)
    lazy_embeddings(lazy_model, lazy)
    rng = np.random.default_rng(2)
    for step in range(20):
        words, bag, target = batch(rng, step, torch.float64)
        for model, opt in ((lazy_model, lazy), (dense_model, dense)):
            opt.zero_grad()
            out = model.head(torch.cat([model.words(words).flatten(1), model.bag(bag)], dim=1))
            if step % 3 == 0:  # the bag sits out: no gradient, no step
                out = model.head(torch.cat([model.words(words).flatten(1), model.bag(bag).detach()], dim=1))
            torch.nn.functional.mse_loss(out, target).backward()
            opt.step()
    assert int(lazy.state[lazy_model.bag.weight]["step"]) == 13
    lazy.flush()
    for a, b in zip(lazy_model.parameters(), dense_model.parameters()):
        assert scale_error(a.detach(), b.detach()) < 1e-12


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("dense_steps", [(5,), (5, 6), (5, 9)])
def test_a_dense_gradient_on_a_lazy_table_steps_every_row_and_sparse_steps_go_on_after_it(dense_steps, fused):
    """A tied weight gives a lazy table a dense gradient at some steps: those step every row as dense Adamax
    does, and the sparse steps after them go on as dense Adamax's (a step read from the lazy history after it
    would be off by the dense step, or refused as a write from outside)."""
    lazy_model, dense_model = Model(True, torch.float64), Model(False, torch.float64)
    lazy = Adamax(lazy_model.parameters(), lr=0.05, fused=fused)  # the kernel's dense step, or torch's ops
    dense = Adamax(dense_model.parameters(), lr=0.05)
    lazy_embeddings(lazy_model, lazy)
    rng = np.random.default_rng(4)
    for step in range(14):
        words, bag, target = batch(rng, step, torch.float64)
        tied = torch.from_numpy(rng.standard_normal((VOCAB, DIM)))
        for model, opt in ((lazy_model, lazy), (dense_model, dense)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(words, bag), target).backward()
            if step in dense_steps:  # the table's gradient as a tied output layer would make it: dense
                model.words.weight.grad = tied + model.words.weight.grad.to_dense()
            opt.step()
        rows = torch.unique(words)
        assert scale_error(lazy_model.words(rows), dense_model.words.weight[rows]) < 1e-12, step
    lazy.flush()
    for a, b in zip(lazy_model.parameters(), dense_model.parameters()):
        assert scale_error(a.detach(), b.detach()) < 1e-12


def test_coupled_weight_decay_is_refused_before_anything_is_hooked():
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters(), weight_decay=0.1)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True"):
        lazy_embeddings(model, opt)
    assert not model.words._forward_pre_hooks and not opt._lazy.tables


def test_a_sparse_gradient_on_an_unregistered_table_names_lazy_embeddings():
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters())
    model(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"sparse gradients, except on .*adamax.torch.lazy_embeddings"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_a_write_to_a_lazy_table_outside_the_optimizer_is_caught():
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters())
    lazy_embeddings(model, opt)
    words, bag = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    model(words, bag).sum().backward()
    opt.step()
    with torch.no_grad():
        model.words.weight[5] = 0.0
    with pytest.raises(RuntimeError, match="written outside the optimizer"):
        model(words, bag)


def test_skip_nonfinite_sees_a_nan_in_a_sparse_gradient():
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters(), skip_nonfinite=True)
    lazy_embeddings(model, opt)
    words, bag = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    model(words, bag).sum().backward()
    rows, nan_rows = torch.tensor([[1]]), torch.full((1, DIM), math.nan)
    model.words.weight.grad = torch.sparse_coo_tensor(rows, nan_rows, (VOCAB, DIM), check_invariants=True)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_max_norm_renormalises_current_rows_and_stays_equal_to_dense():
    """``max_norm`` rescales the looked-up rows in place during the forward; they were brought up to date first."""

    def make(sparse):
        torch.manual_seed(0)
        return torch.nn.Embedding(30, 4, max_norm=1.0, sparse=sparse).double()

    lazy_table, dense_table = make(True), make(False)
    lazy, dense = Adamax(lazy_table.parameters(), lr=0.05), Adamax(dense_table.parameters(), lr=0.05)
    assert lazy_embeddings(lazy_table, lazy) == lazy_embeddings(lazy_table, lazy) == [lazy_table]  # twice: once
    assert len(lazy_table._forward_pre_hooks) == 1
    rng = np.random.default_rng(4)
    for _ in range(40):
        tokens = torch.from_numpy(rng.integers(0, 30, size=6))
        for table, opt in ((lazy_table, lazy), (dense_table, dense)):
            opt.zero_grad()
            table(tokens).pow(2).sum().backward()
            opt.step()
    lazy.flush()
    assert scale_error(lazy_table.weight, dense_table.weight) < 1e-12


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("weight_decay", 0.1, "decoupled_weight_decay=True"), ("betas", (0.9, 0.5), "beta1 < beta2")],
)
def test_a_group_changed_to_what_cannot_be_lazy_is_refused_before_anything_moves(key, value, message):
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters(), lr=0.1)
    lazy_embeddings(model, opt)
    words, bag = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)
    model(words, bag).sum().backward()
    opt.step()
    opt.param_groups[0][key] = value
    opt.zero_grad()
    model(words, bag).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_a_tied_weight_read_before_the_lookup_is_caught_by_autograd():
    """Rows brought up to date by the lookup's hook are an in-place change that autograd sees: a graph that used the
    weight before (a tied output layer computed first) is refused at backward, not computed from stale rows."""
    table = torch.nn.Embedding(10, 3, sparse=True)
    opt = Adamax(table.parameters(), lr=0.1)
    lazy_embeddings(table, opt)
    table(torch.tensor([1, 2])).sum().backward()
    opt.step()
    opt.zero_grad()
    head = table.weight.pow(2)  # reads every row, stale ones included, and keeps them for its backward
    out = table(torch.tensor([3])).sum() + head.sum()  # the hook now brings row 3 up to date, in place
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()
    opt.flush()  # the rule: flush before reading the table directly
    opt.zero_grad()
    head = table.weight.pow(2)
    (table(torch.tensor([3])).sum() + head.sum()).backward()  # every row current: nothing changes, no error


def test_a_state_format_read_from_a_config_file_is_taken_as_the_literal():
    """state_format parsed from JSON: equal to "full", not the same object, and lazy tables take it."""
    import json

    literal, parsed = "full", json.loads('"full"')
    assert parsed == literal and parsed is not literal
    model = Model(True, torch.float32)
    opt = Adamax(model.parameters(), state_format=parsed)
    assert len(lazy_embeddings(model, opt)) == 2


# --- bad rows, writes from outside, resume and pretrained weights (issue: lazy rows that hold under real use) ---


def _stepped_table(rows=20, **options):
    """A lazy 20 x 3 embedding beside a dense bias in a second group, both stepped once (every row current)."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(rows, 3, sparse=True)
    bias = torch.nn.Parameter(torch.ones(3))
    opt = Adamax([{"params": [bias]}, {"params": emb.parameters()}], lr=0.05, **options)
    lazy_embeddings(emb, opt)
    (emb(torch.tensor([1, 2])).sum() + bias.sum()).backward()
    opt.step()
    return emb, bias, opt


def _snapshot(opt, *params):
    values = [p.detach().clone() for p in params]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return values, state


def _unchanged(opt, before, *params):
    values, state = before
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    for p, s in opt.state.items():
        assert all(torch.equal(v, state[id(p)][k]) for k, v in s.items())


@pytest.mark.parametrize("row", [10**9, 20, 25, -1, -21])
@pytest.mark.parametrize("fused", [None, False])
def test_a_sparse_gradient_row_outside_the_table_is_refused_before_any_write(row, fused):
    """torch does not check a hand-built sparse tensor's rows against its size: a row past the table would be
    written past it, a negative one on a row counted from the end.  Refused, naming the row; nothing moves (the
    dense param of the first group included)."""
    emb, bias, opt = _stepped_table(fused=fused)
    bias.grad = torch.ones(3)
    rows = torch.tensor([[0, 3, row, 7, 22]])  # the first row outside is named (row 0 is inside)
    emb.weight.grad = torch.sparse_coo_tensor(rows, torch.ones(5, 3), (20, 3), check_invariants=False)
    before = _snapshot(opt, bias, emb.weight)
    message = (
        rf"the sparse gradient of lazy param 0 of its group: row {row} is outside the table's 20 rows \(0 to 19\)$"
    )
    with pytest.raises(IndexError, match=message):
        opt.step()
    _unchanged(opt, before, bias, emb.weight)
    emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.ones(1, 3), (20, 3))
    opt.step()  # and a good gradient steps as ever


@pytest.mark.parametrize("row", [20, -1])
def test_a_lookup_outside_the_table_is_refused_before_its_rows_are_brought_up_to_date(row):
    emb, _bias, opt = _stepped_table()
    before = _snapshot(opt, emb.weight)
    with pytest.raises(IndexError, match=rf"row {row} is outside"):
        emb(torch.tensor([5, row]))
    _unchanged(opt, before, emb.weight)
    assert opt._lazy.tables[emb.weight].last[5] == 0  # row 5 was not brought up to date either


def _coalesce_cases():
    from hypothesis import strategies as st

    rows = st.lists(st.integers(0, 7), min_size=0, max_size=12)
    return st.tuples(rows, st.sampled_from(["as drawn", "sorted", "sorted, claimed coalesced"]))


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_repeated_rows_are_summed_however_the_gradient_is_ordered_or_marked():
    """A batch with a repeated token gives a sparse gradient with a repeated row; sorted (``[3, 3, 5]``), or built
    with ``is_coalesced=True``, it is still summed: the lazy table steps as dense Adamax on the summed gradient."""
    from hypothesis import given, settings

    @settings(max_examples=40, deadline=None)
    @given(st_steps=__import__("hypothesis").strategies.lists(_coalesce_cases(), min_size=1, max_size=4))
    def check(st_steps):
        torch.manual_seed(0)
        lazy_table = torch.nn.Parameter(torch.randn(8, 2, dtype=torch.float64))
        dense_table = torch.nn.Parameter(lazy_table.detach().clone())
        holder = torch.nn.Embedding.from_pretrained(lazy_table, freeze=False, sparse=True)
        lazy = Adamax(holder.parameters(), lr=0.1)
        dense = Adamax([dense_table], lr=0.1)
        lazy_embeddings(holder, lazy, huge_pages=False)
        for step, (rows, order) in enumerate(st_steps):
            rows = sorted(rows) if order != "as drawn" else rows
            values = torch.arange(1, 2 * len(rows) + 1, dtype=torch.float64).reshape(-1, 2) * (-1) ** step
            index = torch.tensor([rows], dtype=torch.long).reshape(1, -1)
            claim = {"is_coalesced": True} if order.endswith("claimed coalesced") else {}
            grad = torch.sparse_coo_tensor(index, values, (8, 2), check_invariants=False, **claim)
            holder.weight.grad, dense_table.grad = grad, grad.to_dense() if not claim else _summed(index, values)
            lazy.step()
            dense.step()
        lazy.flush()
        assert scale_error(holder.weight, dense_table) < 1e-13
        for key in ("exp_avg", "exp_inf"):
            assert scale_error(lazy.state[holder.weight][key], dense.state[dense_table][key]) < 1e-13

    check()


def test_without_numba_repeated_rows_are_summed_too(monkeypatch):
    """The rows' order is checked without the compiled check too (NumPy): an unsorted or repeated gradient is
    coalesced, a strictly increasing one taken as it is; the table steps as dense Adamax."""
    from adamax.torch import _lazy as torch_lazy
    from adamax.torch import _sparse

    monkeypatch.setattr(_sparse, "lazy_kernels", lambda: None)
    monkeypatch.setattr(torch_lazy, "lazy_kernels", lambda: None)
    assert not _sparse.strictly_increasing(np.array([1, 3, 3])) and not _sparse.strictly_increasing(np.array([1, 3, 2]))
    assert not _sparse.strictly_increasing(np.array([3, 3])) and not _sparse.strictly_increasing(np.array([4, 3]))
    assert _sparse.strictly_increasing(np.array([1, 3, 4])) and _sparse.strictly_increasing(np.array([5]))
    assert _sparse.strictly_increasing(np.array([], dtype=np.int64))
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(8, 2, dtype=torch.float64))
    dense = torch.nn.Parameter(table.detach().clone())
    holder = torch.nn.Embedding.from_pretrained(table, freeze=False, sparse=True)
    lazy, reference = Adamax(holder.parameters(), lr=0.1), Adamax([dense], lr=0.1)
    lazy_embeddings(holder, lazy, huge_pages=False)
    for rows in ([1, 3, 3], [1, 3, 2], [0, 4, 6], [5, 5, 5]):
        index = torch.tensor([rows])
        values = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(3, 2)
        holder.weight.grad = torch.sparse_coo_tensor(index, values, (8, 2))
        dense.grad = holder.weight.grad.to_dense()
        lazy.step()
        reference.step()
    lazy.flush()
    assert scale_error(holder.weight, dense) < 1e-13


def _summed(index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    dense = torch.zeros(8, 2, dtype=values.dtype)
    dense.index_add_(0, index[0], values)
    return dense


@pytest.mark.parametrize("sparse_first", [True, False])
def test_skip_nonfinite_sees_repeated_rows_whose_sum_overflows(sparse_first):
    """Two finite values on one row can sum to inf: the step sees the sum, so skip_nonfinite skips it, as it
    skips a dense twin of the same gradient."""
    emb, bias, opt = _stepped_table(skip_nonfinite=True)
    twin = torch.nn.Parameter(torch.zeros(20, 3))
    twin_opt = Adamax([twin], lr=0.05, skip_nonfinite=True)
    grad = torch.sparse_coo_tensor(torch.tensor([[2, 2]] if sparse_first else [[2, 5, 2]]),
                                   torch.full((2 if sparse_first else 3, 3), 3e38), (20, 3))  # fmt: skip
    emb.weight.grad, twin.grad = grad, grad.to_dense()
    assert not torch.isfinite(twin.grad).all()
    before = _snapshot(opt, emb.weight, bias)
    opt.step()
    twin_opt.step()
    assert opt.skipped_steps == twin_opt.skipped_steps == 1
    _unchanged(opt, before, emb.weight, bias)


def _resume_model(dtype=torch.float32):
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.words = torch.nn.Embedding(50, 4, sparse=True)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.words(x)).square().sum()

    model = M().to(dtype)
    opt = Adamax(model.parameters(), lr=0.05, betas=(0.5, 0.9))  # a 71-step window: sweeps and catch-ups
    lazy_embeddings(model, opt)
    return model, opt


def _train(model, opt, start, stop):
    for step in range(start, stop):
        x = torch.randint(0, 50, (3,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).backward()
        opt.step()


def test_a_lazy_model_resumes_through_load_latest_bit_for_bit(tmp_path):
    """save_checkpoint then load_latest into a new model and optimizer: the model's load comes after the
    optimizer's, a write while every row is current, which must be accepted; the resumed run is the saving one."""
    pytest.importorskip("torch.distributed.checkpoint")
    from adamax.distributed import load_latest, save_checkpoint

    model, opt = _resume_model()
    _train(model, opt, 0, 37)
    save_checkpoint(tmp_path, 37, model, opt)
    _train(model, opt, 37, 200)
    resumed_model, resumed = _resume_model()
    _train(resumed_model, resumed, 0, 5)  # a run that had started: its rows are behind when it loads
    assert load_latest(tmp_path, resumed_model, resumed) == 37
    _train(resumed_model, resumed, 37, 200)
    opt.flush()
    resumed.flush()
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert all(torch.equal(opt.state[p][k], resumed.state[q][k]) for k in ("step", "exp_avg", "exp_inf"))


@pytest.mark.parametrize("order", ["optimizer, then model", "model, then optimizer"])
def test_state_dicts_loaded_in_either_order_resume_bit_for_bit(order):
    model, opt = _resume_model()
    _train(model, opt, 0, 37)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 37, 120)
    resumed_model, resumed = _resume_model()
    if order == "optimizer, then model":
        resumed.load_state_dict(saved_opt)
        resumed_model.load_state_dict(saved_model)
    else:
        resumed_model.load_state_dict(saved_model)
        resumed.load_state_dict(saved_opt)
    _train(resumed_model, resumed, 37, 120)
    opt.flush()
    resumed.flush()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed_model.parameters()))


@pytest.mark.parametrize("how", ["load_state_dict", "copy_", "data"])
def test_pretrained_weights_loaded_after_lazy_embeddings_train_as_dense_adamax_from_them(how):
    """The usual start from pretrained embeddings: the table written after lazy_embeddings, before the first
    step (every row current).  Then training is dense Adamax's from those weights."""
    pretrained = {"words.weight": torch.randn(50, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)}
    model, opt = _resume_model(torch.float64)
    if how == "load_state_dict":
        model.load_state_dict(pretrained, strict=False)
    elif how == "copy_":
        with torch.no_grad():
            model.words.weight.copy_(pretrained["words.weight"])
    else:
        model.words.weight.data = pretrained["words.weight"].clone()
    dense_model, _ = _resume_model(torch.float64)
    dense_model.words.sparse = False
    dense_model.load_state_dict(pretrained, strict=False)
    dense = Adamax(dense_model.parameters(), lr=0.05, betas=(0.5, 0.9))
    _train(model, opt, 0, 150)
    _train(dense_model, dense, 0, 150)
    opt.flush()
    for a, b in zip(model.parameters(), dense_model.parameters()):
        assert scale_error(a, b) < 1e-9  # float64: 1e-14 a step, grown by 150 steps of a nonlinear model


def test_a_write_while_every_row_is_current_is_accepted_and_one_while_rows_are_behind_is_refused():
    emb, bias, opt = _stepped_table()
    for _step in range(3):  # rows 1 and 2 stepped, the rest behind
        emb(torch.tensor([1, 2])).sum().backward()
        opt.step()
    with torch.no_grad():
        emb.weight[5] = 0.0  # torch's version counter sees this one
    before = _snapshot(opt, emb.weight, bias)
    with pytest.raises(RuntimeError, match="written outside the optimizer while some of its rows were behind"):
        opt.flush()
    _unchanged(opt, before, emb.weight, bias)
    emb2, _bias2, opt2 = _stepped_table()
    opt2.flush()  # every row current: a write now keeps the bookkeeping true
    with torch.no_grad():
        emb2.weight[5] = 0.0
    emb2(torch.tensor([5])).sum().backward()
    opt2.step()
    assert opt2.state[emb2.weight]["step"] == 2


def test_a_table_replaced_while_rows_are_behind_or_by_another_shape_is_refused_before_any_write():
    """``weight.data = ...`` is invisible to the version counter; its new address (or shape) is seen."""
    emb, bias, opt = _stepped_table()
    emb(torch.tensor([1])).sum().backward()
    opt.step()
    replaced = emb.weight.detach().clone()
    emb.weight.data = replaced
    before = _snapshot(opt, emb.weight, bias)
    with pytest.raises(RuntimeError, match="while some of its rows were behind"):
        emb(torch.tensor([3]))
    _unchanged(opt, before, emb.weight, bias)
    emb.weight.data = torch.zeros(10, 3)  # smaller: a catch-up sweep would write past it
    emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.ones(1, 3), (10, 3))
    with pytest.raises(RuntimeError, match=r"replaced by one of shape \(10, 3\); its state has shape \(20, 3\)"):
        opt.step()
    assert torch.equal(emb.weight, torch.zeros(10, 3))


def test_a_table_resized_before_its_first_step_gets_bookkeeping_of_its_new_size():
    torch.manual_seed(1)
    emb = torch.nn.Embedding(20, 3, sparse=True)
    opt = Adamax(emb.parameters(), lr=0.05)
    lazy_embeddings(emb, opt)
    emb.weight.data = torch.randn(30, 3)
    dense = torch.nn.Parameter(emb.weight.detach().clone())
    dense_opt = Adamax([dense], lr=0.05)
    for step in range(80):
        rows = torch.tensor([step % 30, 29])
        emb.weight.grad = torch.sparse_coo_tensor(rows[None], torch.ones(2, 3), (30, 3))
        dense.grad = emb.weight.grad.to_dense()
        opt.step()
        dense_opt.step()
    opt.flush()
    assert len(opt._lazy.tables[emb.weight].last) == 30
    assert scale_error(emb.weight, dense) < 4e-6


def test_a_sparse_gradient_with_two_sparse_dimensions_is_refused_before_any_write():
    """torch lets a (20, 3) table take a gradient sparse in both dimensions; the lazy step takes whole rows."""
    emb, bias, opt = _stepped_table()
    bias.grad = torch.ones(3)
    emb.weight.grad = torch.sparse_coo_tensor(torch.tensor([[3, 4], [0, 2]]), torch.ones(2), (20, 3))
    before = _snapshot(opt, bias, emb.weight)
    with pytest.raises(RuntimeError, match="its gradient must be a sparse COO tensor of that shape and dtype"):
        opt.step()
    _unchanged(opt, before, bias, emb.weight)

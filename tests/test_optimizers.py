"""Our optimizers against torch.optim, plus Muon and build_optimizer."""
import io
import itertools
import tokenize
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import optimizers
from errors import UserError
from optimizers import (SGD, Adam, AdamW, MuonAdamW, WeightAverage, build_optimizer,
                        newton_schulz, orthogonalized, set_lr_multiplier)


SHAPES = [(5, 3), (7,), (2, 3, 4)]


def random_tensors(shapes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype) for s in shapes]


def run(opt, params, grads_per_step):
    """Step opt once per list of gradients (one gradient per parameter)."""
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return opt


def fresh(tensors):
    return [t.clone().requires_grad_(True) for t in tensors]


def gradients(shapes, steps, seed=1):
    return [random_tensors(shapes, seed + i) for i in range(steps)]


# --------------------------------------------------------- torch.optim parity

def sgd_cases():
    for momentum, dampening, nesterov, wd in itertools.product(
            (0.0, 0.9), (0.0, 0.1), (False, True), (0.0, 0.01)):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch.optim.SGD refuses these too
        yield dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=wd)


def adam_cases():
    for wd, amsgrad in itertools.product((0.0, 0.1), (False, True)):
        yield dict(lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd, amsgrad=amsgrad)


PARITY = ([(SGD, torch.optim.SGD, kw) for kw in sgd_cases()]
          + [(Adam, torch.optim.Adam, kw) for kw in adam_cases()]
          + [(AdamW, torch.optim.AdamW, kw) for kw in adam_cases()])


@pytest.mark.parametrize("ours,theirs,kwargs", PARITY,
                         ids=[o.__name__ + "".join(f"-{k}={v}" for k, v in kw.items()
                                                   if k not in ("lr", "betas", "eps"))
                              for o, _, kw in PARITY])
def test_matches_torch_optim_over_100_steps(ours, theirs, kwargs):
    start, grads = random_tensors(SHAPES, seed=0), gradients(SHAPES, 100)
    a, b = fresh(start), fresh(start)
    run(ours(a, **kwargs), a, grads)
    run(theirs(b, **kwargs, foreach=False), b, grads)  # foreach=False: the reference loop
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-12)
    assert not torch.equal(a[0], start[0])


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        SGD([torch.zeros(2, requires_grad=True)], momentum=0.0, nesterov=True)


def test_no_foreach_or_lerp_in_code():
    # DirectML lacks these kernels; comments may name them, code may not.
    with open(optimizers.__file__, "rb") as f:
        names = [t.string for t in tokenize.tokenize(f.readline) if t.type == tokenize.NAME]
    banned = [n for n in names if "foreach" in n or "lerp" in n or "fused" in n]
    assert banned == []


# ------------------------------------------------------ state_dict round trip

MATRICES = [(6, 4), (4, 9)]
ROUND_TRIP = [
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), SHAPES),
    (Adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True), SHAPES),
    (AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True), SHAPES),
    (lambda params, **kw: Muon(params, **kw), dict(lr=0.02, weight_decay=0.01), MATRICES),
]


def Muon(params, **group):
    """MuonAdamW with every parameter in one Muon group."""
    return MuonAdamW([dict(params=list(params), use_muon=True, **group)])


def combined(params):
    """MuonAdamW over the round-trip shapes: matrices under Muon, the rest AdamW."""
    return MuonAdamW([dict(params=params[:2], use_muon=True, lr=0.02),
                      dict(params=params[2:], lr=0.01, weight_decay=0.1)])


@pytest.mark.parametrize("make,kwargs,shapes",
                         ROUND_TRIP + [(combined, {}, MATRICES + SHAPES)],
                         ids=["SGD", "Adam", "AdamW", "Muon", "MuonAdamW"])
def test_state_dict_round_trip_is_exact(make, kwargs, shapes):
    start, grads = random_tensors(shapes, seed=0, dtype=torch.float32), gradients(shapes, 100)
    grads = [[g.float() for g in gs] for gs in grads]
    straight = fresh(start)
    run(make(straight, **kwargs), straight, grads)

    first = fresh(start)
    opt = run(make(first, **kwargs), first, grads[:50])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    second = fresh([p.detach() for p in first])
    opt2 = make(second, **kwargs)
    opt2.load_state_dict(state)
    run(opt2, second, grads[50:])
    for x, y in zip(straight, second):
        assert torch.equal(x, y)


# ------------------------------------------------------------------- Muon

@pytest.mark.parametrize("shape", [(32, 64), (64, 32), (48, 128), (128, 48)])
def test_newton_schulz_singular_values_near_one(shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz(G))
    assert s.min() > 0.5 and s.max() < 1.5, s
    assert newton_schulz(G.double()).dtype == torch.float64  # returns the input's dtype


def test_newton_schulz_keeps_singular_directions():
    # The iteration acts on singular values only: U and V are those of G.
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    inner = U.T @ newton_schulz(G) @ Vh.T  # diagonal if the directions are kept
    off = inner - torch.diag(torch.diagonal(inner))
    assert off.abs().max() < 1e-4


def test_orthogonalized_stacks_each_shape_and_matches_one_at_a_time():
    # Matrices of one shape go through newton_schulz as one stack; each comes back as if orthogonalized alone,
    # in its own place and shape.
    g = torch.Generator().manual_seed(2)
    updates = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in [(8, 24), (24, 8), (8, 24), (8, 8)]]
    for update, X in zip(updates, orthogonalized(updates, steps=5)):
        assert X.shape == update.shape
        assert torch.allclose(X, newton_schulz(update), atol=1e-12)
    stack = torch.stack(updates[:1] + updates[2:3])
    assert torch.allclose(newton_schulz(stack)[1], newton_schulz(updates[2]), atol=1e-12)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(3, requires_grad=True)])


def test_muon_reduces_loss_on_linear_regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 16, generator=g)
    W_true = torch.randn(8, 16, generator=g) / 4
    Y = X @ W_true.T
    W = torch.zeros(8, 16, requires_grad=True)
    opt = Muon([W], lr=0.05)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(X @ W.T, Y)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert losses[-1] < 0.05 * losses[0]


# --------------------------------------------------------- build_optimizer

class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.c_attn, self.c_proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x):
        q, k, v = self.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        x = x + self.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return x + self.mlp(self.ln_2(x))


class StandIn(nn.Module):
    """A small GPT-shaped model until transformer.py exists."""

    def __init__(self, vocab_size=11, block_size=8, n_layer=2, n_embd=16, tie=False):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size,
                                      n_layer=n_layer, n_embd=n_embd)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1), targets.flatten())
        return logits, loss


def block_matrices(model):
    return {id(m.weight) for m in model.blocks.modules() if isinstance(m, nn.Linear)}


def group_ids(opt, **match):
    return {id(p) for g in opt.param_groups
            if all(g[k] == v for k, v in match.items()) for p in g["params"]}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "torch-adamw"])
def test_weight_decay_only_on_non_embedding_matrices(name):
    model = StandIn()
    opt = build_optimizer(model, name, lr=1e-3, weight_decay=0.1)
    decayed = group_ids(opt, weight_decay=0.1)
    assert decayed == block_matrices(model) | {id(model.lm_head.weight)}
    every = {id(p) for p in model.parameters()}
    assert group_ids(opt, weight_decay=0.0) == every - decayed
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)
    if name == "torch-adamw":
        assert type(opt) is torch.optim.AdamW


def test_tied_head_counts_as_embedding():
    model = StandIn(tie=True)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert id(model.wte.weight) in group_ids(opt, weight_decay=0.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("tie", [False, True])
def test_muon_groups_hidden_matrices_only(tie):
    model = StandIn(tie=tie)
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1, muon_lr=0.02)
    assert group_ids(opt, use_muon=True) == block_matrices(model)
    adam = group_ids(opt, use_muon=False)
    for p in (model.lm_head.weight, model.wte.weight, model.wpe.weight, model.ln_f.weight):
        assert id(p) in adam
    assert {g["initial_lr"] for g in opt.param_groups} == {0.02, 1e-3}
    set_lr_multiplier(opt, 0.5)
    assert {g["lr"] for g in opt.param_groups} == {0.01, 5e-4}


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_every_optimizer_trains_the_stand_in(name):
    torch.manual_seed(0)
    model = StandIn()
    x = torch.randint(11, (4, 8))
    opt = build_optimizer(model, name, lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(5):
        _, loss = model(x, x)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="unknown optimizer 'lion'"):
        build_optimizer(StandIn(), "lion", lr=1e-3, weight_decay=0.0)


# ------------------------------------------------------ the weight average

@pytest.mark.parametrize("tie", [False, True])
def test_the_weight_average_is_the_mean_of_the_steps_it_was_given_and_resumes_exactly(tie):
    torch.manual_seed(0)
    model = StandIn(tie=tie)
    opt = build_optimizer(model, "muon", lr=1e-2, weight_decay=0.1)
    average, seen = WeightAverage(model), []
    for step in range(5):
        loss = model(torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8)))[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 2:  # continue from a saved state, as --resume does
            saved = average.state_dict()
            average = WeightAverage(model)
            average.load_state_dict(saved)
        seen.append([p.detach().clone() for p in model.parameters()])
        average.add()
    assert average.steps == 5 and len(average.weights) == len(list(model.parameters()))  # a tied tensor once
    last = [p.detach().clone() for p in model.parameters()]
    average.copy_to_model()
    for i, p in enumerate(model.parameters()):
        expected = torch.stack([weights[i] for weights in seen]).mean(0)
        assert torch.allclose(p, expected, atol=1e-6) and not torch.equal(p, last[i])
    if tie:
        assert model.lm_head.weight is model.wte.weight


def test_a_weight_average_of_another_model_is_refused():
    average = WeightAverage(StandIn(n_embd=8))
    average.add()
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage(StandIn(n_embd=16)).load_state_dict(average.state_dict())

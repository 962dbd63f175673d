"""Optimizers written with plain per-tensor ops, plus Muon and build_optimizer.

torch.optim's fast paths (torch._foreach_*, fused kernels, lerp) are not implemented on DirectML and silently fall
back to the CPU there, so every update below is spelled out in plain ops, one tensor at a time (Muon orthogonalizes
a stack of same-shaped matrices at a time, with batched matrix multiplies); SGD, Adam and AdamW match torch.optim's
updates exactly (tests/test_optimizers.py). State is tensors and plain ints, so state_dict() loads with
torch.load(..., weights_only=True). A schedule scales every group's base rate, group['initial_lr'], by one multiplier
(set_lr_multiplier), so Muon's and AdamW's very different rates move together.
"""
import math

import torch
import torch.nn as nn

from errors import UserError

OPTIMIZER_NAMES = ("adamw", "adam", "sgd", "muon", "torch-adamw")


def adam_update(p, state, group, decoupled):
    """One torch.optim.Adam (decoupled=False) or AdamW (decoupled=True) step, with its param group's settings."""
    grad, lr, weight_decay, amsgrad = p.grad, group["lr"], group["weight_decay"], group["amsgrad"]
    beta1, beta2 = group["betas"]
    if not state:
        state["step"] = 0  # a plain int: no device sync to read it, loads with weights_only
        for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    step = state["step"]

    if weight_decay != 0:
        if decoupled:
            p.mul_(1 - lr * weight_decay)  # AdamW: shrink the weights, outside the moments
        else:
            grad = grad.add(p, alpha=weight_decay)  # Adam: L2 term enters the moments

    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    # Both moments start at zero, so early on they are biased toward zero by
    # a factor (1 - beta**step); dividing it out gives unbiased estimates.
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    second = exp_avg_sq
    if amsgrad:  # keep the largest second moment seen, so the step size never grows back
        second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
    denom = (second.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


class PerTensorOptimizer(torch.optim.Optimizer):
    """Steps each parameter on its own; a subclass says how one tensor moves: update(p, state, group) (or how a
    whole group's tensors move: update_group(group, params))."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            self.update_group(g, [p for p in g["params"] if p.grad is not None])
        return loss

    def update_group(self, group, params):
        for p in params:
            self.update(p, self.state[p], group)


class SGD(PerTensorOptimizer):
    """torch.optim.SGD's update rule, one tensor at a time."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay))

    @staticmethod
    def update(p, state, group):
        grad, lr, momentum, weight_decay = p.grad, group["lr"], group["momentum"], group["weight_decay"]
        if weight_decay != 0:
            grad = grad.add(p, alpha=weight_decay)  # L2: the decay rides in the gradient
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                # torch starts the buffer at the first gradient, undampened
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-lr)


class Adam(PerTensorOptimizer):
    """torch.optim.Adam's update rule (weight decay as L2 in the gradient)."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    def update(self, p, state, group):
        adam_update(p, state, group, self.decoupled)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with weight decay decoupled from the gradient."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# --------------------------------------------------------------------- Muon
#
# A weight matrix W maps inputs to outputs. Its gradient (or the momentum of its gradients) G = U S V^T usually has
# a few large singular values and many tiny ones: a plain step moves W a lot along a few directions and hardly at all
# along the rest. Muon replaces G by U V^T -- the same singular directions with every singular value set to 1, and
# the semi-orthogonal matrix closest to G -- so every direction moves at the same rate.
#
# An SVD would give U V^T directly but is slow on accelerators (and missing on some backends). Instead, an odd
# polynomial phi(X) = a X + b (X X^T) X + c (X X^T)^2 X has phi(U S V^T) = U phi(S) V^T: it acts on each singular
# value separately and leaves the directions alone. Iterating phi, starting from X = G / ||G||_F (so every singular
# value lies in [0, 1]), pushes each singular value toward 1 using only matrix multiplies -- cheap, and fine on any
# GPU or DirectML. (a, b, c) = (3.4445, -4.7750, 2.0315) makes the slope at zero large (a), so even tiny singular
# values grow fast; the price is that they end up oscillating in roughly [0.7, 1.2] rather than exactly at 1, which
# does not hurt training.

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G, steps=5, dtype=None):
    """Approximately orthogonalize a matrix G (m, n), or each matrix of a stack G (k, m, n) on its own:
    U S V^T -> U S' V^T, S' ~ 1, in float32 or, on CUDA, bfloat16 (dtype=None picks); returns G's dtype."""
    if G.ndim == 2:
        return newton_schulz(G[None], steps, dtype)[0]
    if dtype is None:
        dtype = torch.bfloat16 if G.device.type == "cuda" else torch.float32
    if G.size(1) > G.size(2):
        return newton_schulz(G.mT, steps, dtype).mT  # work on the wide side, so X X^T is the smaller square
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    X = X / (X.norm(dim=(1, 2), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm, so now <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.to(G.dtype)


def orthogonalized(updates, steps):
    """newton_schulz of each matrix in updates, the matrices of one shape stacked and orthogonalized together: a
    model's layers share a few shapes, and one batched multiply of a stack costs less than one multiply per matrix."""
    by_shape = {}
    for i, update in enumerate(updates):
        by_shape.setdefault(update.shape, []).append(i)
    result = [None] * len(updates)
    for indices in by_shape.values():
        for i, X in zip(indices, newton_schulz(torch.stack([updates[i] for i in indices]), steps).unbind(0)):
            result[i] = X
    return result


def muon_direction(p, state, group):
    """The direction Muon orthogonalizes for one 2-D weight matrix: the momentum of its gradients (Nesterov's when
    the group says so)."""
    grad, momentum = p.grad, group["momentum"]
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = torch.zeros_like(p)
    buf.mul_(momentum).add_(grad, alpha=1 - momentum)  # running average of gradients
    return grad.mul(1 - momentum).add_(buf, alpha=momentum) if group["nesterov"] else buf


def muon_step(p, update, group):
    """Move one weight matrix by its orthogonalized update, after its decoupled weight decay."""
    lr, weight_decay = group["lr"], group["weight_decay"]
    # Orthogonalized, the update has operator norm ~1. A layer's output RMS moves by at most
    # ||dW||_op * sqrt(fan_in / fan_out) times the input's RMS, so matrices with more outputs than inputs
    # (rows > cols) get their step scaled up by sqrt(rows / cols) to move their outputs as much.
    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    p.add_(update, alpha=-lr * scale)


class MuonAdamW(PerTensorOptimizer):
    """One optimizer, two rules: groups with use_muon=True take Muon steps, the rest AdamW steps, under one
    state_dict and one param_groups list for a schedule to walk. Muon (MomentUm Orthogonalized by Newton-Schulz) is for
    2-D hidden weight matrices. Embeddings, the output head, norms and biases take AdamW (see build_optimizer): an
    embedding is a lookup table whose rows move only when their token appears, norms and biases are vectors, and the
    head trains better with AdamW in practice (modded-nanogpt, nanochat)."""

    def __init__(self, param_groups):
        super().__init__(param_groups, dict(use_muon=False, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0,
                                            amsgrad=False, momentum=0.95, nesterov=True, ns_steps=5))

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"] if group["use_muon"] else ():
            if p.ndim != 2:
                raise ValueError(f"Muon updates 2-D weight matrices only, got shape {tuple(p.shape)}; "
                                 f"give it to AdamW instead")

    def update_group(self, group, params):
        """AdamW steps tensor by tensor; a Muon group's matrices are orthogonalized together (orthogonalized)."""
        if not group["use_muon"]:
            for p in params:
                adam_update(p, self.state[p], group, decoupled=True)
            return
        directions = [muon_direction(p, self.state[p], group) for p in params]
        for p, update in zip(params, orthogonalized(directions, group["ns_steps"])):
            muon_step(p, update, group)


class WeightAverage:
    """The running mean of a model's weights over the steps it is told of (add), for a run to end with.

    Late in a run each step's noise moves the weights about the minimum they have found; their mean over the last
    steps lies nearer its middle. A chat model ends better as that mean than as its last step: it answers new
    phrasings of what it learned more often (RESULTS.md, 2026-12-02). The mean is updated in place, one tensor at a
    time with plain ops (DirectML has no lerp), and its state is tensors and an int, so a checkpoint holds it and
    --resume continues it exactly."""

    def __init__(self, model):
        self.named = list(model.named_parameters())  # a tied tensor once, under its first name
        self.steps, self.weights = 0, None

    @torch.no_grad()
    def add(self):
        """Fold the model's weights as they are now into the mean."""
        self.steps += 1
        if self.weights is None:
            self.weights = [p.detach().clone() for _, p in self.named]
            return
        for mean, (_, p) in zip(self.weights, self.named):
            mean.add_(p.detach() - mean, alpha=1 / self.steps)  # mean of n = mean of n-1 + (x - mean) / n

    @torch.no_grad()
    def copy_to_model(self):
        """The model's weights become the mean."""
        for mean, (_, p) in zip(self.weights, self.named):
            p.copy_(mean)

    def state_dict(self):
        return {"steps": self.steps, "weights": {name: w for (name, _), w in zip(self.named, self.weights)}}

    def load_state_dict(self, state):
        """Continue a saved mean; ValueError if it is not a mean of this model's weights."""
        weights = state.get("weights") if isinstance(state, dict) else None
        fits = (isinstance(weights, dict) and list(weights) == [name for name, _ in self.named]
                and type(state.get("steps")) is int and state["steps"] > 0
                and all(isinstance(w, torch.Tensor) and w.is_floating_point() and w.shape == p.shape
                        for w, (_, p) in zip(weights.values(), self.named)))
        if not fits:
            raise ValueError("its weight average does not fit the model")
        self.steps = state["steps"]
        self.weights = [w.to(p.device, p.dtype).clone() for w, (_, p) in zip(weights.values(), self.named)]


def split_parameters(model):
    """A model's trainable parameters by role -> (matrices, head, other): the 2-D weights inside the blocks; the
    2-D weights of model.lm_head (or named 'lm_head...'); embeddings (a head tied to one included), norms, biases."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = getattr(model, "lm_head", None)
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    matrices, head_params, other = [], [], []
    for name, p in model.named_parameters():  # shared (tied) tensors appear once
        if not p.requires_grad:
            continue
        if id(p) in embedding_ids or p.ndim != 2:
            other.append(p)
        elif id(p) in head_ids or name.startswith("lm_head"):
            head_params.append(p)
        else:
            matrices.append(p)
    return matrices, head_params, other


def build_optimizer(model, name, lr, weight_decay, *, betas=(0.9, 0.95), eps=1e-8, momentum=0.9, muon_lr=0.02,
                    muon_momentum=0.95, muon_weight_decay=0.0):
    """The optimizer called `name` (one of OPTIMIZER_NAMES) for `model`; every group carries 'initial_lr'.

    Weight decay applies only to 2-D weight matrices that are not embeddings (hidden matrices and an untied lm_head).
    sgd uses `momentum` and no betas; torch-adamw is torch.optim.AdamW, the baseline; muon takes Muon steps (muon_*)
    for the hidden matrices and AdamW steps for the rest. muon_weight_decay is off by default: decoupled decay shrinks
    weights by lr * wd per step, and Muon's lr is ~30x AdamW's."""
    if name not in OPTIMIZER_NAMES:
        raise UserError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZER_NAMES)}")
    matrices, head, other = split_parameters(model)
    if name == "muon":
        adamw = dict(use_muon=False, lr=lr, betas=tuple(betas), eps=eps)
        groups = [dict(params=matrices, use_muon=True, lr=muon_lr, momentum=muon_momentum,
                       weight_decay=muon_weight_decay),
                  dict(params=head, weight_decay=weight_decay, **adamw),
                  dict(params=other, weight_decay=0.0, **adamw)]
    else:
        groups = [dict(params=matrices + head, weight_decay=weight_decay), dict(params=other, weight_decay=0.0)]
    groups = [dict(g, initial_lr=g.get("lr", lr)) for g in groups if g["params"]]
    if name == "muon":
        return MuonAdamW(groups)
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum)
    adam = {"adamw": AdamW, "adam": Adam, "torch-adamw": torch.optim.AdamW}[name]
    return adam(groups, lr=lr, betas=betas, eps=eps)


def lr_multiplier(step, warmup, decay_iters, min_ratio):
    """The schedule: linear warm-up to 1, then a cosine down to min_ratio at decay_iters."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_iters:
        return min_ratio
    progress = (step - warmup) / max(1, decay_iters - warmup)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def set_lr_multiplier(optimizer, multiplier):
    """Every group's lr becomes its initial_lr (its lr the first time, if it has none) times multiplier."""
    for g in optimizer.param_groups:
        g["lr"] = g.setdefault("initial_lr", g["lr"]) * multiplier

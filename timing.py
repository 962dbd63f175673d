"""How fast does a training step run? Timers, FLOP counts, MFU, and a CLI.

    python timing.py --steps 10 --optimizers adamw,muon,torch-adamw

builds the model for the given config and prints, for each optimizer, the
median forward, backward and optimizer-step milliseconds, tokens per second,
achieved GFLOP/s, and MFU (model FLOPs utilization: achieved model FLOP/s as
a fraction of the device's peak).

Conventions:
- A training step costs flops_per_token = 6N + 12*L*C*T per token (the PaLM
  appendix B / nanoGPT estimate). N counts every parameter except the
  position embedding: a position lookup does no multiply-adds, while a token
  embedding tied to lm_head is the head's matmul. Each weight does 2 FLOPs
  per token forward (multiply, add) and 4 backward (gradients for its input
  and for itself): 6N. Attention's scores QK^T and weighted sum AV add
  2*2*T*C per layer per token forward, times 3 with backward: 12*L*C*T.
  (For an untied token embedding 6N overcounts a little: it is a lookup.)
- The peak is measured, not a datasheet figure: the best FLOP/s of a large
  float32 matmul on this device, cached in ~/.cache/b_lm/peak_flops.json
  ($B_LM_CACHE/peak_flops.json when that is set).
  MFU is therefore "fraction of what this device reaches on a big matmul".
"""
import argparse
import json
import math
import os
import time

import torch

from device import DEVICE_CHOICES, choose_device, synchronize
from errors import UserError, run_main
from files import atomic_write, cache_dir
from optimizers import OPTIMIZER_NAMES, build_optimizer
from transformer import ATTENTION_KINDS, GPTConfig, Transformer


# ------------------------------------------------------------------- timers

def percentile(values, q):
    """The q-th percentile (0..100) with linear interpolation, like numpy's default.

    [1, 2, 3, 4] at 50 -> 2.5; at 90 -> 3.7.
    """
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class StepTimer:
    """Per-step durations, ignoring the first `warmup` steps.

    The first steps pay one-off costs (allocator growth, kernel selection,
    lazy init), so they are dropped. Use as `with timer: ...`, or start()/stop(),
    or record(seconds) for a duration measured elsewhere. `clock` can be
    swapped for a fake in tests.
    """

    def __init__(self, device="cpu", warmup=0, clock=time.perf_counter):
        self.device = torch.device(device)
        self.warmup = warmup
        self.clock = clock
        self.seen = 0        # steps recorded, warm-up included
        self.durations = []  # seconds, warm-up excluded
        self._t0 = None

    def start(self):
        synchronize(self.device)  # don't charge earlier queued work to this step
        self._t0 = self.clock()

    def stop(self):
        synchronize(self.device)
        seconds = self.clock() - self._t0
        self.record(seconds)
        return seconds

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def record(self, seconds):
        self.seen += 1
        if self.seen > self.warmup:
            self.durations.append(seconds)

    def median_ms(self):
        return 1000 * percentile(self.durations, 50)

    def p90_ms(self):
        return 1000 * percentile(self.durations, 90)


def tokens_per_second(tokens, seconds):
    return tokens / seconds if seconds > 0 else math.inf


# --------------------------------------------------------------- FLOPs, MFU

def flops_per_token(n_params, n_layer, n_embd, block_size):
    """Training FLOPs per token: 6N + 12*L*C*T (see the module docstring)."""
    return 6 * n_params + 12 * n_layer * n_embd * block_size


def count_flop_params(model):
    """Parameters that do multiply-adds: all but the position embedding."""
    return sum(p.numel() for name, p in model.named_parameters()
               if "pos" not in name and "wpe" not in name)


def model_flops_per_token(model):
    """flops_per_token for a model with .config.{n_layer, n_embd, block_size}."""
    c = model.config
    return flops_per_token(count_flop_params(model), c.n_layer, c.n_embd, c.block_size)


def mfu(tokens_per_s, flops_per_tok, peak):
    """Model FLOPs utilization: achieved model FLOP/s over the peak FLOP/s."""
    return tokens_per_s * flops_per_tok / peak


def default_cache_path():
    return os.path.join(cache_dir(), "peak_flops.json")


def measure_matmul_flops(device, n, reps=3):
    """Best FLOP/s of an n x n float32 matmul (2*n^3 FLOPs) over `reps` runs."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)  # our own: measuring must not move the training RNG
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    a @ b  # warm-up: first call pays for allocation and kernel selection
    best = math.inf
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_flops(device, n=None, reps=3, cache_path=None):
    """Measured peak float32 FLOP/s of `device`, cached per device/torch/threads/n."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 4096)
    cache_path = cache_path or default_cache_path()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = f"{name}|torch {torch.__version__}|threads {torch.get_num_threads()}|n {n}"
    try:
        with open(cache_path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}  # missing or damaged: measure again
    if not isinstance(cache, dict):
        cache = {}
    if isinstance(cache.get(key), (int, float)):
        return float(cache[key])
    cache[key] = measure_matmul_flops(device, n, reps)
    try:
        _write_json_atomic(cache_path, cache)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return cache[key]


def _write_json_atomic(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)


# ------------------------------------------------------ timing a train step

def time_training_steps(model, optimizer, x, y, steps, warmup=2):
    """Time `warmup + steps` training steps on the batch (x, y).

    model(x, y) must return (logits, loss). Returns StepTimers for
    'forward', 'backward', 'optimizer' (step + zero_grad) and 'total'.
    """
    device = x.device
    fwd, bwd, opt, total = (StepTimer(device, warmup) for _ in range(4))
    model.train()
    for _ in range(warmup + steps):
        fwd.start()
        _, loss = model(x, y)
        seconds = fwd.stop()
        bwd.start()
        loss.backward()
        seconds += bwd.stop()
        opt.start()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += opt.stop()
        total.record(seconds)
    return {"forward": fwd, "backward": bwd, "optimizer": opt, "total": total}


# ---------------------------------------------------------------------- CLI

def cmd_step(args):
    """Print one row of step timings per optimizer."""
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZER_NAMES]
    if unknown or not names:
        what = f"unknown {', '.join(unknown)}" if unknown else "no names given"
        raise UserError(f"--optimizers: {what}; choose from {','.join(OPTIMIZER_NAMES)}")
    sizes = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                 block_size=args.block_size, batch_size=args.batch_size,
                 vocab_size=args.vocab_size, steps=args.steps)
    for flag, value in sizes.items():
        if value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}")
    device = choose_device(args.device)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       dropout=0.0, bias=False, attention=args.attention)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, args.block_size)
    x = torch.randint(args.vocab_size, shape, generator=g).to(device)
    y = torch.randint(args.vocab_size, shape, generator=g).to(device)
    tokens = args.batch_size * args.block_size

    peak = peak_flops(device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"measured peak {peak / 1e9:.1f} GFLOP/s (float32 matmul)")
    probe = Transformer(config)  # FLOPs per token do not depend on the optimizer
    fpt = model_flops_per_token(probe)
    print(f"{count_flop_params(probe) / 1e6:.2f}M params (excluding position embedding), "
          f"{fpt / 1e6:.1f} MFLOP/token, {tokens} tokens/step, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'optimizer':<12} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>8} {'step ms':>8} "
          f"{'p90 ms':>8} {'tok/s':>9} {'GFLOP/s':>8} {'MFU':>6}")
    for name in names:
        torch.manual_seed(args.seed)  # every row starts from the same weights
        model = Transformer(config).to(device)
        opt = build_optimizer(model, name, lr=args.lr, weight_decay=0.1)
        t = time_training_steps(model, opt, x, y, args.steps, args.warmup)
        step_s = t["total"].median_ms() / 1000
        tps = tokens_per_second(tokens, step_s)
        print(f"{name:<12} {t['forward'].median_ms():8.2f} {t['backward'].median_ms():8.2f} "
              f"{t['optimizer'].median_ms():8.2f} {1000 * step_s:8.2f} "
              f"{t['total'].p90_ms():8.2f} {tps:9.0f} {tps * fpt / 1e9:8.2f} "
              f"{mfu(tps, fpt, peak):6.1%}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(
        description="Time training steps (forward, backward, optimizer) for each "
                    "optimizer and report tokens/s, GFLOP/s and MFU.")
    p.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default 4)")
    p.add_argument("--n-embd", type=int, default=128, help="embedding width (default 128)")
    p.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--block-size", type=int, default=64,
                   help="context length in tokens (default 64)")
    p.add_argument("--batch-size", type=int, default=12, help="sequences per step (default 12)")
    p.add_argument("--vocab-size", type=int, default=68,
                   help="vocabulary size; random tokens are drawn from it (default 68)")
    p.add_argument("--steps", type=int, default=10,
                   help="timed steps per optimizer, after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first, to pay one-off costs (default 3)")
    p.add_argument("--optimizers", default=",".join(OPTIMIZER_NAMES),
                   help=f"comma-separated names (default {','.join(OPTIMIZER_NAMES)})")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="AdamW/Adam/SGD learning rate; timing does not depend on it "
                        "(default 1e-3)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION_KINDS,
                   help="sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, "
                        "for DirectML (default sdpa)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="auto tries cuda, mps, dml, then cpu (default auto)")
    p.add_argument("--seed", type=int, default=1337, help="seed for weights and batch "
                   "(default 1337)")
    p.set_defaults(func=cmd_step)  # further modes can become subcommands with their own func
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    run_main(main)

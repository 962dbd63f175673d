"""The meter: step timers, tokens per second, FLOPs per token, and MFU.

Training imports this module, so it holds no benchmarks and no Hugging Face
code. `python timing.py ...` runs the benchmarks, whose code is in
benchmark.py and is loaded only then.

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

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import json
import math
import os
import time

import numpy as np
import torch

from device import synchronize
from errors import UserError
from files import atomic_write, cache_dir
from jsonfile import read_json


# ------------------------------------------------------------------- timers

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
        return self._percentile_ms(50)

    def p90_ms(self):
        return self._percentile_ms(90)

    def _percentile_ms(self, q):
        # numpy raises on an empty list; no steps timed yet is "no number", not a bug
        return 1000 * float(np.percentile(self.durations, q)) if self.durations else math.nan


def best_seconds(fn, repeats, clock=time.perf_counter):
    """(fastest seconds, last result) over `repeats` calls of fn().

    Other work on the machine only ever adds time, so the fastest run is the
    cleanest measure of the code's own speed.
    """
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = clock()
        result = fn()
        best = min(best, clock() - t0)
    return best, result


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


# ------------------------------------------------------------ peak FLOP/s

def default_cache_path():
    return os.path.join(cache_dir(), "peak_flops.json")


def measure_matmul_flops(device, n, reps=3):
    """Best FLOP/s of an n x n float32 matmul (2*n^3 FLOPs) over `reps` runs."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)  # our own: measuring must not move the training RNG
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)

    def matmul():
        a @ b
        synchronize(device)  # a GPU only queues the kernel: wait for it before the clock stops

    matmul()  # warm-up: first call pays for allocation and kernel selection
    return 2 * n ** 3 / best_seconds(matmul, reps)[0]


def peak_flops(device, n=None, reps=3, cache_path=None):
    """Measured peak float32 FLOP/s of `device`, cached per device/torch/threads/n."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 4096)
    cache_path = cache_path or default_cache_path()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = f"{name}|torch {torch.__version__}|threads {torch.get_num_threads()}|n {n}"
    try:
        cache = read_json(cache_path, "FLOP/s cache")
    except UserError:
        cache = {}  # missing or damaged: measure again
    if not isinstance(cache, dict):
        cache = {}
    if type(cache.get(key)) in (int, float) and 0 < cache[key] < math.inf:  # else damaged: measure again
        return float(cache[key])
    cache[key] = measure_matmul_flops(device, n, reps)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with atomic_write(cache_path, "w") as f:
            json.dump(cache, f, indent=1)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return cache[key]


if __name__ == "__main__":
    # The command: benchmark.py holds it, so that training, which imports the meter, never loads it.
    from benchmark import main
    from errors import run_main
    run_main(main)

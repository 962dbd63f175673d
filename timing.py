"""The meter: timed calls, tokens per second, FLOPs per token, MFU, and a script's time and peak memory. Training
imports it, so it holds no benchmarks: `python timing.py ...` runs those of benchmark.py, loaded only then.

A training step costs 6N + 12*L*C*T FLOPs per token (PaLM appendix B, nanoGPT): each weight does 2 FLOPs per token
forward and 4 backward (6N); attention's QK^T and AV add 2*2*T*C per layer forward, times 3 with backward. N leaves
out the position embedding, a lookup with no multiply-adds (a token embedding tied to lm_head is the head's matmul;
an untied one is a lookup too, so 6N overcounts a little). The peak is measured, not a datasheet figure: the best
FLOP/s of a large matmul on this device in the precision the model computes in (float32, or the bfloat16/float16 of
autocast on a GPU), cached in ~/.cache/b_lm/peak_flops.json (or $B_LM_CACHE's).
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import json
import math
import os
import subprocess
import sys
import time

import torch

from device import device_name, synchronize
from errors import UserError
from files import atomic_write, cache_dir
from jsonfile import read_object


# ------------------------------------------------------------------- timers

def timed(fn, device="cpu", clock=time.perf_counter):
    """(fn(), its seconds), waiting for the device's queued work before the clock starts and before it stops: a GPU
    only queues kernels, so without the wait a step would be charged for the work before it, or only for queueing."""
    synchronize(device)
    t0 = clock()
    result = fn()
    synchronize(device)
    return result, clock() - t0


def best_seconds(fn, repeats, clock=time.perf_counter):
    """(fastest seconds, last result) over `repeats` calls of fn(): other work on the machine only ever adds time."""
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
    return sum(p.numel() for name, p in model.named_parameters() if "pos" not in name and "wpe" not in name)


def model_flops_per_token(model):
    c = model.config
    return flops_per_token(count_flop_params(model), c.n_layer, c.n_embd, c.block_size)


def mfu(tokens_per_s, flops_per_tok, peak):
    """Model FLOPs utilization: achieved model FLOP/s over the peak."""
    return tokens_per_s * flops_per_tok / peak


# ------------------------------------------------------------ peak FLOP/s

def measure_matmul_flops(device, n, reps=3, dtype=torch.float32):
    """Best FLOP/s of an n x n matmul in dtype (2*n^3 FLOPs) over `reps` runs."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)  # our own: measuring must not move the training RNG
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    timed(lambda: a @ b, device)  # warm-up: first call pays for allocation and kernel selection
    return 2 * n ** 3 / best_seconds(lambda: timed(lambda: a @ b, device), reps)[0]


def peak_flops(device, n=None, reps=3, cache_path=None, dtype=None):
    """Measured peak FLOP/s of `device` in dtype (None: float32), cached per device/torch/threads/n/dtype."""
    device, dtype = torch.device(device), dtype or torch.float32
    n = n or (2048 if device.type == "cpu" else 8192)  # a GPU needs a large matmul to reach its peak
    cache_path = cache_path or os.path.join(cache_dir(), "peak_flops.json")
    key = f"{device_name(device)}|torch {torch.__version__}|threads {torch.get_num_threads()}|n {n}"
    key += "" if dtype == torch.float32 else f"|{str(dtype).replace('torch.', '')}"  # float32's keys as before
    try:
        cache = read_object(cache_path)
    except UserError:  # missing or damaged: measure again
        cache = {}
    if type(cache.get(key)) in (int, float) and 0 < cache[key] < math.inf:
        return float(cache[key])
    cache[key] = measure_matmul_flops(device, n, reps, dtype)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        with atomic_write(cache_path, "w") as f:
            json.dump(cache, f, indent=1)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return cache[key]


# ------------------------------------------------------- other processes

def run_timed(command, what, cwd=None):
    """(wall seconds, the finished process) of command, output captured; UserError naming `what` and the last line of
    its stderr (a traceback's last line is the error itself) if it fails."""
    done, seconds = timed(lambda: subprocess.run(command, cwd=cwd, capture_output=True, text=True))
    if done.returncode:
        raise UserError(f"{what} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return seconds, done


# The child runs the script as `python script.py` would, then prints its peak. VmHWM from /proc, not getrusage's
# ru_maxrss: a child inherits a large parent's high-water mark in ru_maxrss (exec keeps it), hiding its own.
PEAK_MEMORY_CHILD = """import atexit, os, resource, runpy, sys
def peak_kb():
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except OSError:  # not Linux: ru_maxrss, in bytes on macOS
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
atexit.register(lambda: print("peak_kb", peak_kb(), flush=True))
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_measured(script, *args):
    """(wall seconds, peak resident MB) of `python script args` in a fresh process."""
    seconds, done = run_timed([sys.executable, "-c", PEAK_MEMORY_CHILD, script, *args], os.path.basename(script))
    return seconds, int(done.stdout.split("peak_kb")[-1]) / 1024


if __name__ == "__main__":
    from benchmark import main
    from errors import run_main
    run_main(main)

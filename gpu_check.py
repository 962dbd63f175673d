"""The GPU check: what b_lm says about GPUs, run and measured on one, in a few minutes.

    python gpu_check.py                          # on a CUDA machine: a Markdown table of what it measured
    python gpu_check.py --device cpu --quick     # the same steps at toy sizes, on the CPU: checks this script

Each step is a subprocess with a time limit, so a failure is a row of the table, not the end of the check:
1. tests/test_on_device.py on the device: the KV cache, batched serving with chunked prefill, training under
   autocast, eager and with torch.compile, and sampling from what it saved;
2. training the default model, then a GPT-2-small-shaped one (12 layers, 768 wide, context 1024), with autocast
   (bfloat16 where the GPU has it) and --compile: tokens/s and MFU against the GPU's measured peak in that precision;
3. batch-1 generation, ours against transformers' GPT-2 on the same device (`timing.py generate`), at the default
   benchmark shape and at GPT-2 small's;
4. serving: `serve_benchmark.py --text` on the default model of step 2, 1, 4 and 16 streaming clients.
"""
from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import os
import re
import subprocess
import sys
import tempfile
import time

from device import choose_device, device_name
from errors import ArgumentParser, UserError, run_main

ROOT = os.path.dirname(os.path.abspath(__file__))
GPT2_SMALL = ["--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--block-size", "1024"]
TOY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]


def steps(device, folder, quick):
    """[(what, command, time limit in seconds, how to read its output)], in order."""
    default_ckpt, gpt2_ckpt = os.path.join(folder, "default.pth"), os.path.join(folder, "gpt2.pth")
    tests = [sys.executable, "-m", "pytest", "-q", "tests/test_on_device.py"]
    train = [sys.executable, "train.py", "--device", device, "--dtype", "auto", "--compile", "--metrics", "",
             "--plot", ""]
    generate = [sys.executable, "timing.py", "generate", "--device", device]
    serve = [sys.executable, "serve_benchmark.py", "--ckpt", default_ckpt, "--text"]
    if quick:
        few = ["--max-iters", "4", "--eval-interval", "2", "--eval-tokens", "256", "--final-eval-tokens", "256"]
        return [("device tests", tests, 240, read_tests),
                ("training, default model (toy here)", [*train, *TOY, *few, "--ckpt", default_ckpt], 300,
                 read_training),
                ("training, GPT-2-small shape (toy here)", [*train, *TOY, *few, "--n-layer", "3", "--ckpt", gpt2_ckpt],
                 300, read_training),
                ("generation (toy here)", [*generate, *TOY, "--new-tokens", "8", "--prompt-tokens", "4", "--repeats",
                                           "1"], 300, read_generation),
                ("serving, text completions", [*serve, "--seconds", "2", "--clients", "1", "2", "--max-tokens", "8"],
                 300, read_serving)]
    return [("device tests", tests, 300, read_tests),
            ("training, default model", [*train, "--max-iters", "300", "--eval-interval", "100", "--ckpt",
                                         default_ckpt], 300, read_training),
            ("training, GPT-2-small shape", [*train, *GPT2_SMALL, "--batch-size", "16", "--max-iters", "150",
                                             "--eval-interval", "50", "--eval-tokens", "65536",
                                             "--final-eval-tokens", "65536", "--ckpt", gpt2_ckpt], 420, read_training),
            ("generation, 6 layers x 256", generate, 300, read_generation),
            ("generation, GPT-2-small shape", [*generate, *GPT2_SMALL, "--vocab-size", "50257", "--new-tokens", "200"],
             300, read_generation),
            ("serving, text completions", [*serve, "--seconds", "10"], 300, read_serving)]


# ------------------------------------------------------------ reading each step's output

def read_tests(out):
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
    return summary[-1].strip("= ") if summary else None


def read_training(out):
    """tokens/s and MFU of the last logged interval (the first pays for compiling), and the final val loss."""
    rates = re.findall(r"([\d,]+) tokens/s, MFU (\d+%)", out)
    final = re.search(r"final: step=(\d+) .*?val_loss=([\d.]+)", out)
    if not rates or not final:
        return None
    return f"{rates[-1][0]} tokens/s, MFU {rates[-1][1]}; val loss {final.group(2)} after {final.group(1)} steps"


def read_generation(out):
    rows = {name: re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+([\d.]+)x", out, re.MULTILINE)
            for name in ("ours, KV cache", "transformers GPT-2")}
    same = re.search(r"gave the same \d+ tokens: True", out) is not None
    if not all(rows.values()):
        return None
    ours, theirs = rows["ours, KV cache"], rows["transformers GPT-2"]
    return (f"ours {float(ours.group(1)):,.0f} tokens/s, transformers {float(theirs.group(1)):,.0f}: "
            f"{ours.group(2)}x; cache and no cache the same tokens: {same}")


def read_serving(out):
    rows = re.findall(r"^\s*(\d+)\s+\d+\s+([\d,]+)\s+([\d.]+)x\s+(\d+) ms\s+(\d+) ms", out, re.MULTILINE)
    return "; ".join(f"{n} clients {rate} tokens/s ({ratio}x), TTFT p95 {p95} ms"
                     for n, rate, ratio, _, p95 in rows) or None


def run_step(command, env_extra, limit, read):
    """(seconds, the result read from its output, or why there is none)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, **env_extra})
    except subprocess.TimeoutExpired:
        return limit, f"FAILED: over its {limit} s"
    seconds = time.perf_counter() - start
    result = read(done.stdout)
    if done.returncode or result is None:
        why = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        return seconds, f"FAILED (exit {done.returncode}): {why[:300]}"
    return seconds, result


def main(argv=None):
    p = ArgumentParser(description="Run b_lm's GPU check: device tests, training with autocast and compile, "
                                   "generation against transformers, serving. Prints a Markdown table.")
    p.add_argument("--device", default="cuda", help="the device to check (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="toy sizes and a few steps: checks the script, measures nothing")
    args = p.parse_args(argv)
    device = choose_device(args.device)  # a machine without it: one line, before anything runs
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--device {args.device}: the check runs on CUDA GPUs (or, with --quick, the CPU)")
    print(f"b_lm GPU check on {device_name(device)}{' (quick: toy sizes, nothing measured)' * args.quick}", flush=True)
    print("| step | seconds | result |\n|---|---|---|", flush=True)
    failed, total = 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for what, command, limit, read in steps(args.device, folder, args.quick):
            seconds, result = run_step(command, {"B_LM_TEST_DEVICE": args.device}, limit, read)
            failed += result.startswith("FAILED")
            print(f"| {what} | {seconds:.0f} | {result} |", flush=True)
    print(f"{failed} of the steps failed; {time.perf_counter() - total:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)

"""The meter (timing.py) and the step benchmark built on it; no assertions about wall-clock speed."""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import benchmark
import timing
from conftest import ROOT, assert_clean_error, run_script
from errors import UserError, run_main
from optimizers import build_optimizer


class TinyLM(nn.Module):
    """Just enough of a GPT for the timing code: config, wte, wpe, head, (logits, loss)."""

    def __init__(self, vocab_size=11, block_size=8, n_layer=1, n_embd=8):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size,
                                      n_layer=n_layer, n_embd=n_embd)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList([nn.Linear(n_embd, n_embd)])
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        logits = self.lm_head(torch.relu(self.blocks[0](x)))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def fake_clock(times):
    it = iter(times)
    return lambda: next(it)


def test_importing_the_meter_pulls_in_no_benchmark():
    # Training imports timing: it must not drag transformers (or the benchmarks) along.
    code = ('import sys, timing; loaded = [m for m in ("transformers", "benchmark") '
            'if m in sys.modules]; assert not loaded, loaded')
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------- FLOPs, MFU

def test_flops_per_token_formula():
    # 6N + 12*L*C*T
    assert timing.flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16


def test_model_flops_per_token_skips_position_embedding():
    model = TinyLM(vocab_size=11, block_size=8, n_layer=1, n_embd=8)
    n = 11 * 8 + (8 * 8 + 8) + 8 * 11  # wte, the block's linear, lm_head; not wpe
    assert timing.count_flop_params(model) == n
    assert timing.model_flops_per_token(model) == 6 * n + 12 * 1 * 8 * 8


def test_model_flops_per_token_on_the_transformer():
    from transformer import GPTConfig, Transformer
    model = Transformer(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16))
    n = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    assert timing.model_flops_per_token(model) == 6 * n + 12 * 2 * 16 * 8


def test_mfu_and_tokens_per_second():
    assert timing.tokens_per_second(1200, 0.5) == 2400
    assert timing.tokens_per_second(1200, 0) == float("inf")
    assert timing.mfu(tokens_per_s=1000, flops_per_tok=1e6, peak=1e10) == pytest.approx(0.1)


# ---------------------------------------------------------------- timers

def test_step_timer_ignores_warmup_and_reports_median_p90():
    # start/stop pairs: durations 5 (warm-up), then 1, 2, 3, 4 seconds
    clock = fake_clock([0, 5, 10, 11, 20, 22, 30, 33, 40, 44])
    timer = timing.StepTimer("cpu", warmup=1, clock=clock)
    for _ in range(5):
        with timer:
            pass
    assert timer.durations == [1, 2, 3, 4]
    assert timer.median_ms() == pytest.approx(2500)
    assert timer.p90_ms() == pytest.approx(3700)  # numpy's linear interpolation


def test_step_timer_record_and_empty():
    timer = timing.StepTimer(warmup=2)
    assert np.isnan(timer.median_ms()) and np.isnan(timer.p90_ms())
    for s in (9.0, 9.0, 0.010, 0.030, 0.020):
        timer.record(s)
    assert timer.durations == [0.010, 0.030, 0.020]
    assert timer.median_ms() == pytest.approx(20)


def test_best_seconds_keeps_the_fastest_run_and_the_last_result():
    calls = iter([1, 2, 3])
    clock = fake_clock([0, 5, 10, 12, 20, 23])  # runs of 5, 2 and 3 seconds
    assert timing.best_seconds(lambda: next(calls), repeats=3, clock=clock) == (2, 3)


# ------------------------------------------------------------ peak FLOP/s

def test_measure_matmul_flops_counts_2n_cubed(monkeypatch):
    def half_a_second(fn, repeats):
        fn()
        return 0.5, None
    monkeypatch.setattr(timing, "best_seconds", half_a_second)
    assert timing.measure_matmul_flops("cpu", n=4, reps=1) == 2 * 4 ** 3 / 0.5


def test_peak_flops_is_measured_once_then_cached(tmp_path, monkeypatch):
    cache = tmp_path / "sub" / "peak_flops.json"  # a missing folder is made
    first = timing.peak_flops("cpu", n=32, reps=1, cache_path=str(cache))
    [(key, stored)] = json.loads(cache.read_text()).items()
    assert stored == first
    assert "cpu" in key and torch.__version__ in key and "threads" in key

    def boom(*a, **k):
        raise AssertionError("should have used the cache")
    monkeypatch.setattr(timing, "measure_matmul_flops", boom)
    assert timing.peak_flops("cpu", n=32, reps=1, cache_path=str(cache)) == first


def test_peak_flops_survives_a_damaged_cache(tmp_path):
    cache = tmp_path / "peak_flops.json"
    cache.write_text("{not json")
    peak = timing.peak_flops("cpu", n=16, reps=1, cache_path=str(cache))
    assert list(json.loads(cache.read_text()).values()) == [peak]


# ------------------------------------------- the step benchmark (benchmark.py)

def test_time_training_steps_structure():
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1)
    x = torch.randint(11, (2, 8))
    t = benchmark.time_training_steps(model, opt, x, x, steps=3, warmup=1)
    assert set(t) == {"forward", "backward", "optimizer", "total"}
    assert all(len(timer.durations) == 3 for timer in t.values())
    phases = sum(np.array(t[k].durations) for k in ("forward", "backward", "optimizer"))
    assert np.allclose(t["total"].durations, phases)
    assert all(p.grad is None for p in model.parameters())  # zero_grad ran


def test_cli_rejects_unknown_optimizer(capsys):
    with pytest.raises(SystemExit) as e:
        run_main(benchmark.main, ["--optimizers", "adamw,lion"])
    assert e.value.code == 2
    assert "unknown lion" in capsys.readouterr().err


def test_cli_rejects_bad_sizes():
    with pytest.raises(UserError, match="--n-embd 10 must be a multiple of --n-head 4"):
        benchmark.main(["--n-embd", "10"])
    with pytest.raises(UserError, match="--steps must be at least 1"):
        benchmark.main(["--steps", "0"])
    with pytest.raises(UserError, match="--warmup must be >= 0"):
        benchmark.main(["--warmup", "-1"])


@pytest.mark.parametrize("flags, fragment", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--lr", "nan"], "--lr must be a number > 0, got nan"),
    (["--lr", "0"], "--lr must be a number > 0"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--n-layer", "0"], "--n-layer must be at least 1"),
    (["--vocab-size", "0"], "--vocab-size must be at least 1"),
    (["--n-embd", "10"], "--n-embd 10 must be a multiple of --n-head 4"),
    (["--optimizers", ""], "--optimizers: no names given"),
    (["--optimizers", "adamw,lion"], "unknown lion"),
    (["--device", "quantum"], "argument --device: invalid choice"),
    (["--steps", "many"], "argument --steps: invalid int value"),
    (["generate", "--threads", "0"], "--threads must be at least 1"),
    (["generate", "--repeats", "0"], "--repeats must be at least 1"),
    (["generate", "--new-tokens", "0"], "--new-tokens must be at least 1"),
    (["hf", "--new-tokens", "0"], "--new-tokens and --prompt-tokens must be >= 1"),
    (["hf", "--seed", "-1"], "--seed >= 0"),
    (["bogus-mode"], "unrecognized arguments: bogus-mode"),
])
def test_bad_flags_exit_2_before_any_timing(cli, flags, fragment):
    """timing.py's command is benchmark.main under run_main: each refusal is one line and status 2."""
    assert_clean_error(cli(benchmark, *flags), fragment)


def test_the_script_refuses_a_bad_flag_with_status_2():
    assert_clean_error(run_script("timing.py", "--steps", "0"), "--steps must be at least 1")


def test_cli_prints_one_row_per_optimizer(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "peak_flops", lambda device: 1e11)  # no measuring in tests
    benchmark.main(["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8",
                    "--batch-size", "2", "--steps", "1", "--warmup", "0",
                    "--optimizers", "adamw,muon", "--device", "cpu"])
    rows = capsys.readouterr().out.splitlines()
    assert "measured peak 100.0 GFLOP/s" in rows[0]
    assert rows[-2].startswith("adamw") and rows[-1].startswith("muon")
    # MFU is the row's own GFLOP/s over the 100 GFLOP/s peak
    gflops, mfu = rows[-1].split()[-2:]
    assert float(mfu.rstrip("%")) == pytest.approx(float(gflops), abs=0.06)

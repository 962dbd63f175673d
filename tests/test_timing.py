"""The meter (timing.py) and the step benchmark built on it; no assertions about wall-clock speed."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
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

def test_timed_returns_the_result_and_the_seconds_between_two_clock_readings():
    assert timing.timed(lambda: "done", "cpu", clock=fake_clock([10, 13.5])) == ("done", 3.5)


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


def test_peak_flops_is_measured_in_the_precision_asked_for(tmp_path, monkeypatch):
    """MFU under bfloat16 autocast is against the bfloat16 peak (a GPU's is many times its float32 one)."""
    measured = []

    def measure(device, n, reps, dtype=torch.float32):
        measured.append(dtype)
        return {torch.float32: 1e9, torch.bfloat16: 4e9}[dtype]
    monkeypatch.setattr(timing, "measure_matmul_flops", measure)
    cache = tmp_path / "peak_flops.json"
    assert timing.peak_flops("cpu", n=8, cache_path=str(cache)) == 1e9
    assert timing.peak_flops("cpu", n=8, cache_path=str(cache), dtype=torch.bfloat16) == 4e9
    assert timing.peak_flops("cpu", n=8, cache_path=str(cache), dtype=torch.bfloat16) == 4e9  # cached, its own key
    assert measured == [torch.float32, torch.bfloat16]
    float32_key, bfloat16_key = json.loads(cache.read_text())
    assert "float" not in float32_key and bfloat16_key == float32_key + "|bfloat16"
    monkeypatch.undo()  # and the real measurement runs in that dtype
    assert timing.measure_matmul_flops("cpu", n=16, reps=1, dtype=torch.bfloat16) > 0


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
    assert all(len(seconds) == 3 for seconds in t.values())  # the warm-up step is not among them
    phases = sum(np.array(t[k]) for k in ("forward", "backward", "optimizer"))
    assert np.allclose(t["total"], phases)
    assert all(p.grad is None for p in model.parameters())  # zero_grad ran


def test_cli_rejects_unknown_optimizer(capsys):
    with pytest.raises(SystemExit) as e:
        run_main(benchmark.main, ["--optimizers", "adamw,lion"])
    assert e.value.code == 2
    assert "unknown lion" in capsys.readouterr().err


def test_cli_rejects_bad_sizes():
    with pytest.raises(UserError, match="--n-head 4 does not divide --n-embd 10"):
        benchmark.main(["--n-embd", "10"])
    with pytest.raises(UserError, match="--steps must be >= 1"):
        benchmark.main(["--steps", "0"])
    with pytest.raises(UserError, match="--warmup must be >= 0"):
        benchmark.main(["--warmup", "-1"])


# Each command line (split at spaces) and what its one-line refusal says.
BAD_FLAGS = """
--steps 0                    | --steps must be >= 1, got 0
--warmup -1                  | --warmup must be >= 0, got -1
--lr nan                     | --lr must be a number > 0, got nan
--lr 0                       | --lr must be a number > 0
--seed -1                    | --seed must be in [0, 2**63)
--batch-size 0               | --batch-size must be >= 1
--n-layer 0                  | --n-layer must be a whole number from 1
--n-layer 100000             | --n-layer must be a whole number from 1 to 1,000
--vocab-size 0               | --vocab-size must be a whole number from 1
--n-embd 10                  | --n-head 4 does not divide --n-embd 10
--n-layer 999 --n-embd 65536 | make it smaller
--optimizers ,               | --optimizers: no names given
--optimizers adamw,lion      | unknown lion
--device quantum             | argument --device: invalid choice
--steps many                 | argument --steps: invalid int value
generate --threads 0         | --threads must be >= 1
generate --repeats 0         | --repeats must be >= 1
generate --new-tokens 0      | --new-tokens must be >= 1
generate --seed -1           | --seed must be in [0, 2**63)
generate --positions rope --n-embd 6 --n-head 2 | --positions rope needs an even head size
hf --new-tokens 0            | --new-tokens must be >= 1
hf --prompt-tokens 0         | --prompt-tokens must be >= 1
hf --prompt-tokens 1000      | --prompt-tokens 1000 and --new-tokens 200 must fit in GPT-2's 1024 positions
hf --seed -1                 | --seed must be in [0, 2**63)
bogus-mode                   | unrecognized arguments: bogus-mode
"""


@pytest.mark.parametrize("line", BAD_FLAGS.strip().splitlines())
def test_bad_flags_exit_2_before_any_timing(cli, line):
    """timing.py's command is benchmark.main under run_main: each refusal is one line and status 2."""
    flags, fragment = (part.strip() for part in line.split("|"))
    assert_clean_error(cli(benchmark, *flags.split()), fragment)


def test_the_script_refuses_a_bad_flag_with_status_2():
    assert_clean_error(run_script("timing.py", "--steps", "0"), "--steps must be >= 1")


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


# ------------------------------------------------ a script in a process of its own

def test_run_measured_reports_the_scripts_own_peak_memory(tmp_path):
    script = tmp_path / "allocate.py"
    script.write_text("import sys\nblock = bytearray(int(sys.argv[1]) * 2**20)\nprint('allocated')\n")
    seconds, small = timing.run_measured(str(script), "1")
    _, large = timing.run_measured(str(script), "200")
    assert seconds > 0 and 0 < small < 100
    assert 200 < large < small + 220  # its own 200 MB, not this test process's high-water mark


def test_run_measured_runs_the_script_as_python_would(tmp_path):
    # Its folder comes first on the path, as `python script.py` puts it there: the module beside it imports.
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    (tmp_path / "main.py").write_text("import sys, helper\nassert helper.VALUE == 42 and sys.argv[1:] == ['a']\n")
    timing.run_measured(str(tmp_path / "main.py"), "a")


def test_a_failed_script_is_one_line_naming_it_and_its_last_error_line(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise ValueError('no such corpus')\n")
    with pytest.raises(UserError, match=r"^broken.py failed: ValueError: no such corpus$"):
        timing.run_measured(str(script))
    with pytest.raises(UserError, match=r"^the copy failed: "):
        timing.run_timed(["cp", os.path.join(ROOT, "no-such-file"), str(tmp_path)], "the copy")


def test_the_tokenizer_benchmarks_scale_table_trains_in_fresh_processes(tmp_path, capsys):
    import tokenizer_benchmark
    corpus = tmp_path / "small.txt"
    with open(os.path.join(ROOT, "data.txt"), encoding="utf-8") as f:
        corpus.write_text(f.read(5_000), encoding="utf-8")
    tokenizer_benchmark.scale_table(str(corpus), 300)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.strip().startswith(("1x", "4x", "16x"))]
    assert [row[0] for row in rows] == ["1x", "4x", "16x"]
    assert all(float(seconds) > 0 and float(peak_mb) > 1 for _, _, seconds, peak_mb in rows)


def test_the_nanogpt_benchmark_runs_nanogpt_again_only_when_its_time_misses_ours_by_over_5_percent():
    from nanogpt_benchmark import corrected_iterations
    assert corrected_iterations(9163, 375.0, 362.0) is None  # 3.6% over
    assert corrected_iterations(9163, 344.0, 362.0) is None  # 5.0% under
    assert corrected_iterations(9163, 400.0, 362.0) == 8293  # its own pace: 9163 x 362 / 400
    assert corrected_iterations(9163, 300.0, 362.0) == 11057
    assert corrected_iterations(1, 1000.0, 1.0) == 1  # never none at all


def test_the_nanogpt_benchmark_refuses_a_validation_split_shorter_than_a_context():
    from nanogpt_benchmark import val_nats_per_char
    with pytest.raises(UserError, match="shorter than a context of 64"):
        val_nats_per_char(lambda x: None, torch.arange(64), 64)


def test_the_gpu_check_runs_every_step_and_reads_each_result():
    """gpu_check.py at toy sizes on the CPU: the same steps and readers as on a GPU, so a lent GPU's run is not the
    first time they meet the scripts' output."""
    done = run_script("gpu_check.py", "--device", "cpu", "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row[0].strip("| ") for row in rows[1:]] == [
        "device tests", "training, default model (toy here)", "training, GPT-2-small shape (toy here)",
        "generation (toy here)", "serving, text completions"]
    results = [row[2].strip(" |") for row in rows[1:]]
    assert re.fullmatch(r"\d+ passed(, \d+ skipped)? in [\d.]+s", results[0]), results[0]
    for training in results[1:3]:
        assert re.fullmatch(r"[\d,]+ tokens/s, MFU \d+%; val loss [\d.]+ after 4 steps", training), training
    assert re.fullmatch(r"ours [\d,]+ tokens/s, transformers [\d,]+: [\d.]+x; cache and no cache the same tokens: "
                        r"True", results[3]), results[3]
    assert re.fullmatch(r"1 clients [\d,]+ tokens/s \(1\.0x\), TTFT p95 \d+ ms; 2 clients .*", results[4]), results[4]
    assert "0 of the steps failed" in done.stdout


@pytest.mark.parametrize("flags, fragment", [(["--device", "cuda"], "no CUDA"), (["--device", "gpu"], "unknown device")])
def test_the_gpu_check_without_the_device_is_one_line(flags, fragment):
    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_clean_error(run_script("gpu_check.py", *flags), fragment)


FAKE_NANOGPT_TRAIN = '''
import os, pickle, sys
import torch
from model import GPT, GPTConfig
flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--"))
iters, timing_run = int(flags["max_iters"]), flags["out_dir"].endswith("timing")
if not timing_run and os.environ.get("FAKE_NANOGPT_FAILS"):
    sys.exit("out of memory")
ms = 10.0 if timing_run else 12.0  # the short timing run at one pace, the real runs slower: as nanoGPT's here
for i in range(iters + 1):
    print(f"iter {i}: loss 1.0000, time {ms:.2f}ms, mfu 1.00%")
with open(os.path.join("data", flags["dataset"], "meta.pkl"), "rb") as f:
    config = dict(block_size=int(flags["block_size"]), vocab_size=pickle.load(f)["vocab_size"])
os.makedirs(flags["out_dir"], exist_ok=True)
torch.save({"model_args": config, "model": GPT(GPTConfig(**config)).state_dict(), "iter_num": iters},
           os.path.join(flags["out_dir"], "ckpt.pt"))
'''

FAKE_NANOGPT_MODEL = '''
from dataclasses import dataclass
import torch.nn as nn
@dataclass
class GPTConfig:
    block_size: int
    vocab_size: int
class GPT(nn.Module):  # every character equally likely: its loss is log(vocab_size) exactly
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.table.weight)
    def forward(self, idx, targets=None):
        return self.table(idx), None
'''


def run_benchmark(nanogpt, corpus, ckpt, work):
    """nanogpt_benchmark.py with b_lm's side given (ckpt, trained for 5 s), so only nanoGPT's side runs."""
    return run_script("nanogpt_benchmark.py", "--nanogpt", nanogpt, "--data", corpus, "--ours", ckpt,
                      "--ours-seconds", "5", "--work", str(work))


@pytest.fixture
def fake_nanogpt(tmp_path):
    """A stand-in for a nanoGPT checkout with its interface: train.py's flags, log lines and ckpt.pt; model.py."""
    folder = tmp_path / "nanoGPT"
    (folder / "config").mkdir(parents=True)
    (folder / "train.py").write_text(FAKE_NANOGPT_TRAIN)
    (folder / "model.py").write_text(FAKE_NANOGPT_MODEL)
    (folder / "configurator.py").write_text("")
    (folder / "config" / "train_shakespeare_char.py").write_text("")
    return str(folder)


def test_the_nanogpt_benchmark_reruns_nanogpt_at_its_own_pace_scores_both_and_says_where_its_files_are(
        tmp_path, fake_nanogpt, tiny_ckpt, small_corpus):
    work = str(tmp_path / "work")
    done = run_benchmark(fake_nanogpt, small_corpus, tiny_ckpt, work)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"the runs' files go to {work}" in done.stdout
    # 10 ms an iteration in the timing run: 500 fit 5 s; the real run's 501 iterations at 12 ms took 6.0 s (20% over),
    # so it runs again with 500 x 5 / 6.012 = 416, whose 5.004 s are within 5%.
    assert "500 iterations took 6 s, not 5 s: again with 416" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| nanoGPT"))
    assert "| 416 |" in row and "iteration 416" in row
    theirs = float(row.split("|")[-2])
    assert theirs == pytest.approx(math.log(len(set(Path(small_corpus).read_text(encoding="utf-8")))), abs=1e-4)
    ours = float(next(line for line in done.stdout.splitlines() if line.startswith("| b_lm")).split("|")[-2])
    assert f"b_lm leads by {theirs - ours:.3f} nats/char" in done.stdout
    assert os.path.isfile(os.path.join(work, "out", "ckpt.pt"))  # a finished benchmark keeps its files


def test_a_failed_nanogpt_benchmark_says_why_in_one_line_and_leaves_no_folder(
        tmp_path, fake_nanogpt, tiny_ckpt, small_corpus, monkeypatch):
    monkeypatch.setenv("FAKE_NANOGPT_FAILS", "1")
    work = tmp_path / "work"
    done = run_benchmark(fake_nanogpt, small_corpus, tiny_ckpt, work)
    assert_clean_error(done, "nanoGPT failed: out of memory")
    assert not work.exists()

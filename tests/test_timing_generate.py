"""`python timing.py generate`: runs on a tiny shape and prints its rows; no wall-clock assertions."""
import sys

import pytest
import torch

import timing
from conftest import assert_clean_error, run_script
from errors import UserError

TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
        "--new-tokens", "10", "--prompt-tokens", "8", "--repeats", "1"]


def rows(output):
    """{row name: its columns} of the table timing.py generate prints."""
    table = {}
    for line in output.splitlines():
        for name in ("ours, KV cache", "ours, no cache", "transformers GPT-2"):
            if line.startswith(name):
                table[name] = line[len(name):].split()
    return table


def test_generate_without_transformers(capsys):
    assert timing.main(["generate", *TINY, "--skip-transformers"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert set(table) == {"ours, KV cache", "ours, no cache"}
    for tok_s, ratio, first_ms in table.values():
        assert float(tok_s) > 0 and ratio == "-" and float(first_ms) > 0
    assert "gave the same 10 tokens: True" in out
    assert "2 layers, 32 wide, 2 heads, block 32, vocab 68" in out
    assert "ceiling: each step reads all 0.03M matrix weights" in out


def test_a_decoding_step_reads_every_matrix_weight_once():
    model = timing.Transformer(timing.GPTConfig(vocab_size=68, n_layer=3, n_embd=64, n_head=4))
    # Per block: qkv (C x 3C), attention out (C x C), MLP in and out (C x 4C each): 12 C^2; then the head.
    assert timing.matrix_weights(model) == 3 * 12 * 64 * 64 + 68 * 64
    assert timing.weight_read_seconds(1000, repeats=1) > 0


def test_generate_against_transformers(capsys):
    pytest.importorskip("transformers")
    timing.main(["generate", *TINY, "--attention", "explicit"])
    table = rows(capsys.readouterr().out)
    assert set(table) == {"ours, KV cache", "ours, no cache", "transformers GPT-2"}
    assert table["transformers GPT-2"][1] == "1.00x"
    assert table["ours, KV cache"][1].endswith("x")


def test_transformers_generates_every_token_asked_for():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = timing.build_hf_gpt2(n_layer=1, n_embd=16, n_head=2, block_size=16, vocab_size=11)
    ids = timing.generate_hf(model, [3, 4], 12)
    assert len(ids) == 12 and all(0 <= i < 11 for i in ids)


def test_missing_transformers_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(UserError, match="--skip-transformers"):
        timing.main(["generate", *TINY])


@pytest.mark.parametrize("flags, message", [
    (["--new-tokens", "32"], "--new-tokens 32"),
    (["--prompt-tokens", "32"], "--prompt-tokens 32"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--n-embd", "30", "--n-head", "4"], "multiple of --n-head"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_bad_generate_flags(flags, message):
    with pytest.raises(UserError, match=message):
        timing.main(["generate", *TINY, "--skip-transformers", *flags])


def test_best_seconds_calls_repeats_times_and_keeps_the_last_result():
    calls = iter([1, 2, 3])
    seconds, result = timing.best_seconds(lambda: next(calls), repeats=3)
    assert result == 3 and seconds >= 0


def test_step_is_still_the_default_mode(capsys, monkeypatch):
    monkeypatch.setattr(timing, "peak_flops", lambda device: 1e11)  # no measuring in tests
    flags = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8",
             "--batch-size", "2", "--steps", "1", "--warmup", "0", "--optimizers", "sgd",
             "--device", "cpu"]
    timing.main(flags)
    unnamed = capsys.readouterr().out.splitlines()
    timing.main(["step", *flags])
    named = capsys.readouterr().out.splitlines()
    assert unnamed[-1].startswith("sgd") and named[-1].startswith("sgd")


def test_the_script():
    result = run_script("timing.py", "generate", *TINY, "--skip-transformers")
    assert result.returncode == 0, result.stderr
    assert set(rows(result.stdout)) == {"ours, KV cache", "ours, no cache"}
    assert_clean_error(run_script("timing.py", "generate", "--new-tokens", "many"), "--new-tokens")
    assert_clean_error(run_script("timing.py", "generate", "--block-size", "8"), "--block-size 8")

"""`python timing.py generate` and `hf` (benchmark.py): tiny shapes, their rows; no wall-clock assertions."""
import math
import re
import sys

import pytest
import torch

import benchmark
from conftest import assert_clean_error, run_script
from errors import UserError
from transformer import GPTConfig, Transformer

TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32",
        "--new-tokens", "10", "--prompt-tokens", "8", "--repeats", "1"]


def rows(output):
    """{row name: its columns} of the table benchmark.py generate prints."""
    table = {}
    for line in output.splitlines():
        for name in ("ours, KV cache", "ours, no cache", "transformers GPT-2"):
            if line.startswith(name):
                table[name] = line[len(name):].split()
    return table


def test_generate_without_transformers(capsys):
    assert benchmark.main(["generate", *TINY, "--skip-transformers"]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    assert set(table) == {"ours, KV cache", "ours, no cache"}
    for tok_s, ratio, first_ms in table.values():
        assert ratio == "-"
    assert "gave the same 10 tokens: True" in out
    assert "2 layers, 32 wide, 2 heads, block 32, vocab 68" in out
    assert "ceiling: each step reads all 0.03M matrix weights" in out
    assert re.search(r"^floor: the model's matrix products alone, a call each, take [\d.]+ ms .* so at most \d+ "
                     r"tokens/s$", out, re.MULTILINE)  # no transformers to compare with


def test_other_parts_are_timed_beside_gpt2s(capsys):
    # RESULTS.md's StableLM column: the same command with --positions rope --mlp swiglu added.
    benchmark.main(["generate", *TINY, "--skip-transformers", "--positions", "rope", "--mlp", "swiglu"])
    out = capsys.readouterr().out
    assert "rope/layer/swiglu" in out.splitlines()[0]
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("GPT-2 parts")] == [
        ["GPT-2", "parts,", "cache"]]


def test_generate_ours_is_greedy():
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = [3, 4]
    with torch.no_grad():
        for _ in range(6):  # the oracle: argmax of a full forward pass, one token at a time
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    for use_cache in (True, False):
        assert benchmark.generate_ours(model, [3, 4], 6, use_cache=use_cache) == ids[2:]


def test_a_decoding_step_reads_every_matrix_weight_once():
    model = Transformer(GPTConfig(vocab_size=68, n_layer=3, n_embd=64, n_head=4))
    # Per block: qkv (C x 3C), attention out (C x C), MLP in and out (C x 4C each): 12 C^2; then the head.
    assert benchmark.matrix_weights(model) == 3 * 12 * 64 * 64 + 68 * 64


def test_the_weight_read_covers_every_weight(monkeypatch):
    products = []

    def fastest(fn, repeats):
        products.append(fn())
        return 0.25, products[-1]
    monkeypatch.setattr(benchmark, "best_seconds", fastest)
    assert benchmark.weight_read_seconds(3000, repeats=1) == 0.25
    by_rows, by_columns = products  # a matrix-vector product each way: rows of 1024, then columns of 1024
    assert by_rows.shape == (math.ceil(3000 / 1024),) and by_columns.shape == (1, math.ceil(3000 / 1024))


def test_generate_against_transformers(capsys):
    pytest.importorskip("transformers")
    benchmark.main(["generate", *TINY, "--attention", "explicit"])
    table = rows(capsys.readouterr().out)
    assert set(table) == {"ours, KV cache", "ours, no cache", "transformers GPT-2"}
    assert table["transformers GPT-2"][1] == "1.00x"
    # "vs transformers" is the ratio of the tok/s columns
    ours, hf = float(table["ours, KV cache"][0]), float(table["transformers GPT-2"][0])
    assert float(table["ours, KV cache"][1].rstrip("x")) == pytest.approx(ours / hf, rel=0.02, abs=0.01)


def test_transformers_generates_every_token_asked_for():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = benchmark.hf_gpt2("a test", n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=11,
                              bos_token_id=None, eos_token_id=None)
    ids = benchmark.generate_hf(model, [3, 4], 12)
    assert len(ids) == 12 and all(0 <= i < 11 for i in ids)


def test_missing_transformers_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    with pytest.raises(UserError, match="--skip-transformers"):
        benchmark.main(["generate", *TINY])


@pytest.mark.parametrize("flags, message", [
    (["--new-tokens", "32"], "--new-tokens 32"),
    (["--prompt-tokens", "32"], "--prompt-tokens 32"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--n-embd", "30", "--n-head", "4"], "--n-head 4 does not divide --n-embd 30"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_generate_flags(flags, message):
    with pytest.raises(UserError, match=message):
        benchmark.main(["generate", *TINY, "--skip-transformers", *flags])


def test_step_is_still_the_default_mode(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "peak_flops", lambda device: 1e11)  # no measuring in tests
    flags = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8",
             "--batch-size", "2", "--steps", "1", "--warmup", "0", "--optimizers", "sgd",
             "--device", "cpu"]
    benchmark.main(flags)
    unnamed = capsys.readouterr().out.splitlines()
    benchmark.main(["step", *flags])
    named = capsys.readouterr().out.splitlines()
    assert unnamed[-1].startswith("sgd") and named[-1].startswith("sgd")


def test_the_script():
    script = "timing.py"  # it hands over to benchmark.main
    result = run_script(script, "generate", *TINY, "--skip-transformers")
    assert result.returncode == 0, result.stderr
    assert set(rows(result.stdout)) == {"ours, KV cache", "ours, no cache"}
    assert_clean_error(run_script(script, "generate", "--new-tokens", "many"), "--new-tokens")
    assert_clean_error(run_script(script, "generate", "--block-size", "8"), "--block-size 8")


def test_the_hf_benchmarks_folder_converts_with_its_tokenizer(tmp_path):
    """`timing.py hf`'s model, at a tiny shape: convert.py imports it in a process of its own, every id maps."""
    pytest.importorskip("transformers")
    from checkpoint import load_model
    from hf import read_tokenizer
    shape = dict(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    folder, ckpt = tmp_path / "gpt2", str(tmp_path / "gpt2.pth")
    folder.mkdir()
    theirs = benchmark.gpt2_shaped_folder(str(folder), seed=0, shape=shape)
    seconds, peak_mb = benchmark.run_measured(benchmark.CONVERT, "from-hf", str(folder), ckpt)
    assert seconds > 0 and peak_mb > 0
    ours, tokenizer, _ = load_model(ckpt)
    _, to_ours, _ = read_tokenizer(str(folder))
    assert sorted(to_ours) == list(range(300)) and tokenizer.decode([to_ours[256]]) == "\x00\x00"
    prompt = [5, 260, 7]
    with torch.inference_mode():
        ids = benchmark.generate_hf(theirs, prompt, 4)
        assert benchmark.generate_ours(ours, [to_ours[i] for i in prompt], 4) == [to_ours[i] for i in ids]


def test_the_hf_mode_end_to_end_at_a_tiny_shape(capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(benchmark, "GPT2_SMALL", dict(vocab_size=300, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert benchmark.main(["hf", "--new-tokens", "4", "--prompt-tokens", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("GPT-2-small shape (1 layers, 16 wide, block 16, vocab 300), 0 MB of weights")
    assert lines[1].startswith("from-hf ") and "; to-hf " in lines[1] and "peak RSS" in lines[1]
    assert lines[2].startswith("greedy, batch 1, 4 new tokens after 3,") and lines[2].endswith("the same tokens: True")
    assert [line[:20].strip() for line in lines[3:5]] == ["ours, KV cache", "transformers GPT-2"]
    assert re.fullmatch(r"floor: the model's matrix products alone, a call each, take [\d.]+ ms \(\d+% of the "
                        r"ceiling's speed\), so at most \d+ tokens/s, [\d.]+x transformers", lines[5]), lines[5]

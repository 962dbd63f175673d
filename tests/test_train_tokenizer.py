"""train_tokenizer.py as a user runs it: a subprocess, its files, its exit code and stderr."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the modules live flat at the top of the repo

import bpe  # noqa: E402

SLICE = (ROOT / "data.txt").read_text(encoding="utf-8")[:30_000]


def run(*args, code=None):
    script = ["-c", code] if code else ["train_tokenizer.py"]
    return subprocess.run([sys.executable, *script, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def assert_user_error(proc, *fragments):
    """Exit 2 with one 'error: ...' line on stderr and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(SLICE, encoding="utf-8")
    return path


def test_trains_and_saves(corpus, tmp_path):
    out = tmp_path / "tok.json"
    proc = run("--data", str(corpus), "--vocab-size", "300", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "merges 100% (40/40)" in proc.stdout  # the progress readout
    last = proc.stdout.strip().splitlines()[-1]
    assert "vocab size 300" in last and str(out) in last
    tok = bpe.BPETokenizer.load(out)
    assert tok.vocab_size == 300 and tok.to_dict()["kind"] == "bpe"
    # the same merges as training in-process on the same text
    assert tok.merges == bpe.train_bpe(SLICE, 300).merges
    assert tok.decode(tok.encode(SLICE)) == SLICE


def test_small_blocks_give_the_same_tokenizer(corpus, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("--data", str(corpus), "--vocab-size", "300", "--out", str(a)).returncode == 0
    assert run("--data", str(corpus), "--vocab-size", "300", "--out", str(b),
               "--block-mb", "0.001").returncode == 0
    assert a.read_text() == b.read_text()


def test_custom_pattern(corpus, tmp_path):
    out = tmp_path / "tok.json"
    assert run("--data", str(corpus), "--vocab-size", "300", "--out", str(out),
               "--pattern", r"\S+|\s+").returncode == 0
    assert json.loads(out.read_text())["pattern"] == r"\S+|\s+"


def test_help_explains_every_flag():
    proc = run("--help")
    assert proc.returncode == 0
    for flag in ("--data", "--vocab-size", "--out", "--pattern", "--block-mb"):
        assert flag in proc.stdout
    assert proc.stdout.count("default") >= 5


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(run("--data", str(empty), "--out", str(tmp_path / "t.json")), "empty")
    assert not (tmp_path / "t.json").exists()


def test_vocab_too_small(corpus, tmp_path):
    assert_user_error(run("--data", str(corpus), "--vocab-size", "259",
                          "--out", str(tmp_path / "t.json")), "too small", "260")


def test_non_utf8_corpus(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 5 + b"\xc3\x28 broken\n")
    assert_user_error(run("--data", str(bad), "--out", str(tmp_path / "t.json")),
                      "not UTF-8", "byte offset 50")


def test_missing_corpus(tmp_path):
    assert_user_error(run("--data", str(tmp_path / "nope.txt")), "nope.txt")


def test_bad_pattern(corpus, tmp_path):
    proc = run("--data", str(corpus), "--pattern", "(", "--out", str(tmp_path / "t.json"))
    assert_user_error(proc, "not a valid regex")


def test_corrupt_tokenizer_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"kind": "bpe", "merges": [')
    code = ("import sys; from errors import run_main; from bpe import BPETokenizer; "
            "run_main(lambda argv: BPETokenizer.load(argv[0]), sys.argv[1:])")
    assert_user_error(run(str(path), code=code), str(path), "not a valid tokenizer JSON")

"""Careless and hostile input to every script: one line on stderr, a non-zero exit, no traceback, no file lost.

Most cases run a script's main in this process through errors.run_main, as
its command line would (an exception other than SystemExit would fail the
test: that is a traceback). Each asserts that every file that existed
before is byte-identical after.
"""
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import evaluate
import generate
import make_qa
import sft
import train
import train_tokenizer
from conftest import QA, ROOT, TINY
from errors import run_main


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def refused(capsys, script, *argv, fragment=""):
    """Run script.main(argv) as its command line would; assert a clean refusal and return the message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(script.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    # a run that got as far as training has drawn its progress bar on stderr, above the message
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("training:")]
    assert e.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path, small_corpus, tiny_ckpt, tiny_chat_ckpt):
    """A folder with a corpus, a Q&A file and checkpoints of the user's: none of them may change."""
    shutil.copy(small_corpus, tmp_path / "corpus.txt")
    shutil.copy(QA, tmp_path / "qa.jsonl")
    shutil.copy(tiny_ckpt, tmp_path / "base.pth")
    shutil.copy(tiny_chat_ckpt, tmp_path / "chat.pth")
    (tmp_path / "folder").mkdir()
    return tmp_path


def tiny_train(workdir, *flags):
    return ["--data", workdir / "corpus.txt", *TINY, "--max-iters", "2", *flags]


# ------------------------------------------------- 1 and 3: output paths, checked before any work

@pytest.mark.parametrize("case", ["ckpt-is-data", "metrics-is-data", "plot-is-data", "metrics-exists",
                                  "ckpt-in-missing-folder", "ckpt-is-folder", "metrics-in-missing-folder",
                                  "plot-is-folder", "same-ckpt-and-metrics"])
def test_train_outputs(workdir, capsys, case):
    flags = {"ckpt-is-data": ["--ckpt", workdir / "corpus.txt"],
             "metrics-is-data": ["--ckpt", workdir / "a.pth", "--metrics", workdir / "corpus.txt"],
             "plot-is-data": ["--ckpt", workdir / "a.pth", "--plot", workdir / "corpus.txt"],
             "metrics-exists": ["--ckpt", workdir / "a.pth", "--metrics", workdir / "qa.jsonl"],
             "ckpt-in-missing-folder": ["--ckpt", workdir / "nowhere" / "a.pth"],
             "ckpt-is-folder": ["--ckpt", workdir / "folder"],
             "metrics-in-missing-folder": ["--ckpt", workdir / "a.pth", "--metrics", workdir / "no" / "m.csv"],
             "plot-is-folder": ["--ckpt", workdir / "a.pth", "--plot", workdir / "folder"],
             "same-ckpt-and-metrics": ["--ckpt", workdir / "a.pth", "--metrics", workdir / "a.pth"]}[case]
    before = snapshot(workdir)
    refused(capsys, train, *tiny_train(workdir, "--metrics", workdir / "m.csv", *flags))
    assert snapshot(workdir) == before


@pytest.mark.parametrize("flags, fragment", [
    (["--ckpt", "base.pth"], "input"),  # the same file as --init-from
    (["--ckpt", "x.pth", "--metrics", "qa.jsonl"], "input"),
    (["--ckpt", "x.pth", "--plot", "corpus.txt", "--data", "corpus.txt"], "input"),
    (["--ckpt", "folder"], "folder"),
    (["--ckpt", "nowhere/x.pth"], "does not exist"),
])
def test_sft_outputs(workdir, capsys, monkeypatch, flags, fragment):
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    refused(capsys, sft, "--init-from", "base.pth", "--qa", "qa.jsonl", "--max-iters", "1", *flags,
            fragment=fragment)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("report, fragment", [("qa.jsonl", "input"), ("chat.pth", "input"),
                                               ("corpus.txt", "input"), ("folder", "folder"),
                                               ("nowhere/r.json", "does not exist")])
def test_evaluate_report(workdir, capsys, report, fragment):
    before = snapshot(workdir)
    refused(capsys, evaluate, "--ckpt", workdir / "chat.pth", "--qa", workdir / "qa.jsonl", "--data",
            workdir / "corpus.txt", "--report", workdir / report, fragment=fragment)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("out, fragment", [("corpus.txt", "input"), ("folder", "folder"),
                                           ("nowhere/t.json", "does not exist")])
def test_train_tokenizer_out(workdir, capsys, out, fragment):
    before = snapshot(workdir)
    refused(capsys, train_tokenizer, "--data", workdir / "corpus.txt", "--vocab-size", "300", "--out",
            workdir / out, fragment=fragment)
    assert snapshot(workdir) == before


def test_make_qa_out_onto_its_facts(workdir, capsys):
    facts = workdir / "facts.jsonl"
    shutil.copy(os.path.join(ROOT, "qa_facts.jsonl"), facts)
    before = snapshot(workdir)
    refused(capsys, make_qa, "--facts", facts, "--out", facts)
    assert snapshot(workdir) == before


# ------------------------------------------------------------- two runs on one checkpoint

def test_a_second_run_on_the_same_checkpoint_is_refused(tmp_path, small_corpus):
    ckpt = tmp_path / "run.pth"
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data", small_corpus, *TINY, "--ckpt", str(ckpt),
               "--metrics", "", "--eval-interval", "1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([*command, "--max-iters", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        lock = tmp_path / ".run.pth.lock"
        while not lock.exists() and first.poll() is None:
            time.sleep(0.05)
        second = subprocess.run([*command, "--max-iters", "5", "--overwrite"], capture_output=True, text=True,
                                env=env, timeout=120)
        assert second.returncode == 2 and "in use by another run" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and not ckpt.exists()
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130 and "interrupted at step" in err, err[-2000:]
    assert torch.load(ckpt, weights_only=True)["step"] >= 1
    assert sorted(os.listdir(tmp_path)) == ["run.pth"]  # the lock is gone with the run


def test_temporaries_of_a_killed_run_are_cleared(tmp_path, small_corpus):
    stale = tmp_path / ".run.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.main(["--data", small_corpus, *TINY, "--ckpt", str(tmp_path / "run.pth"), "--metrics", "",
                "--max-iters", "2"])
    assert sorted(os.listdir(tmp_path)) == ["run.pth"]


# --------------------------------------------------------- 4: writes and caches that fail

def test_a_cache_path_that_is_a_file(workdir, capsys, monkeypatch):
    monkeypatch.setenv("B_LM_CACHE", str(workdir / "corpus.txt"))
    before = snapshot(workdir)
    refused(capsys, train, *tiny_train(workdir, "--ckpt", workdir / "a.pth", "--metrics", ""),
            fragment="token cache")
    assert snapshot(workdir) == before


def test_a_truncated_token_cache_is_made_again(tmp_path, small_corpus, monkeypatch):
    from data import tokenize_to_memmap
    from tokenizer import CharTokenizer
    monkeypatch.setenv("B_LM_CACHE", str(tmp_path / "cache"))
    tok = CharTokenizer(open(small_corpus, encoding="utf-8").read())
    whole = list(tokenize_to_memmap(small_corpus, tok))
    (cached,) = [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".json")]
    cached.write_bytes(cached.read_bytes()[:100])
    assert list(tokenize_to_memmap(small_corpus, tok)) == whole


# ----------------------------------------------------------- 5: checkpoints that lie

def mutate(checkpoint, case):
    c = dict(checkpoint)
    if case == "shape":
        c["model_config"] = {**c["model_config"], "n_embd": 32}
    elif case == "huge":
        c["model_config"] = {**c["model_config"], "n_embd": 10_000_000, "n_head": 1}
    elif case == "extra-field":
        c["model_config"] = {**c["model_config"], "flux_capacitor": 1}
    elif case == "ill-typed-field":
        c["model_config"] = {**c["model_config"], "n_layer": "one"}
    elif case == "nan-weights":
        c["model"] = {k: torch.full_like(v, math.nan) for k, v in c["model"].items()}
    elif case == "tokenizer-without-chars":
        c["tokenizer"] = {"kind": "char"}
    elif case == "tokenizer-kind":
        c["tokenizer"] = {"kind": "words"}
    elif case == "string-version":
        c["format_version"] = "1"
    elif case == "model-type":
        c["model_type"] = "lstm-ish"
    elif case == "vocab":
        c["tokenizer"] = {**c["tokenizer"], "chars": c["tokenizer"]["chars"][:-1]}
    return c


CHECKPOINT_MUTATIONS = ["shape", "huge", "extra-field", "ill-typed-field", "nan-weights", "tokenizer-without-chars",
                        "tokenizer-kind", "string-version", "model-type", "vocab"]


@settings(max_examples=len(CHECKPOINT_MUTATIONS), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CHECKPOINT_MUTATIONS))
def test_a_damaged_checkpoint_is_refused_by_every_reader(tmp_path, tiny_ckpt, capsys, case):
    path = tmp_path / f"{case}.pth"
    torch.save(mutate(torch.load(tiny_ckpt, weights_only=True), case), path)
    before = snapshot(tmp_path)
    refused(capsys, generate, "--ckpt", path, "--length", "3")
    refused(capsys, evaluate, "--ckpt", path, "--qa", QA, "--report", "", "--samples", "0")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key, value", [("step", "3"), ("step", -1), ("rng", None), ("rng", {"torch": 1}),
                                        ("history", "rows"), ("best_val_loss", "low"), ("optimizer", None),
                                        ("train_args", ["--lr"])])
def test_a_checkpoint_that_cannot_resume_says_so(workdir, capsys, key, value):
    path = workdir / "damaged.pth"
    torch.save({**torch.load(workdir / "base.pth", weights_only=True), key: value}, path)
    before = snapshot(workdir)
    refused(capsys, train, *tiny_train(workdir, "--ckpt", path, "--metrics", "", "--resume", "--max-iters", "40"))
    assert snapshot(workdir) == before


# ------------------------------------------------------------------- 6: numbers

TRAIN_FLOATS = {"--lr": [0, -1e-3], "--muon-lr": [0], "--beta2": [1.5, 1.0, -0.1], "--min-lr-ratio": [-5, 1.5],
                "--grad-clip": [-1], "--time-limit": [-1], "--weight-decay": [-0.1], "--dropout": [1.0, -0.5],
                "--val-fraction": [0, 1, -0.1]}
SAMPLING_FLOATS = {"--temp": [-0.5], "--top-p": [0, 1.5]}
NOT_A_NUMBER = [math.nan, math.inf, -math.inf]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(TRAIN_FLOATS)), data=st.data())
def test_every_float_flag_of_training_refuses_nan_infinity_and_out_of_range(capsys, flag, data):
    value = data.draw(st.sampled_from(TRAIN_FLOATS[flag] + NOT_A_NUMBER))
    for script in (train, sft) if flag not in ("--dropout", "--val-fraction") else (train,):
        refused(capsys, script, flag, repr(value) if isinstance(value, float) else str(value), "--data", "missing.txt",
                fragment=flag)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(SAMPLING_FLOATS)), data=st.data())
def test_every_float_flag_of_sampling_refuses_nan_infinity_and_out_of_range(tiny_ckpt, capsys, flag, data):
    value = data.draw(st.sampled_from(SAMPLING_FLOATS[flag] + NOT_A_NUMBER))
    refused(capsys, generate, "--ckpt", tiny_ckpt, flag, repr(value), fragment=flag)


@pytest.mark.parametrize("flags, fragment", [
    (["--seed", "123456789012345678901234"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--warmup-iters", "-10"], "--warmup-iters"),
    (["--max-iters", "-1"], "--max-iters"),
    (["--batch-size", "0"], "--batch-size"),
    (["--log-interval", "0"], "--log-interval"),
    (["--n-embd", "10000000", "--n-head", "1", "--max-iters", "1"], "parameters"),
    (["--n-layer", "99999999999999999999999", "--max-iters", "1"], "at most 1000"),
    (["--n-layer", "100000", "--n-embd", "16", "--max-iters", "1"], "at most 1000"),  # small, but slow to build
    (["--batch-size", "99999999999999999999999", "--max-iters", "1"], "--batch-size"),
    (["--grad-accum", "99999999999999999999999", "--max-iters", "1"], "--grad-accum"),
    (["--positions", "rope", "--n-embd", "18", "--n-head", "2"], "even head size"),
    (["--positions", "absolute"], "--positions"),
    (["--mlp", "geglu"], "--mlp"),
])
def test_numbers_out_of_range_are_refused_before_any_work(workdir, capsys, flags, fragment):
    before = snapshot(workdir)
    refused(capsys, train, *tiny_train(workdir, "--ckpt", workdir / "a.pth", "--metrics", "", *flags),
            fragment=fragment)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("flag", ["--max-answer-tokens", "--sample-length", "--samples"])
def test_evaluate_refuses_lengths_that_would_never_end(tiny_chat_ckpt, capsys, flag):
    refused(capsys, evaluate, "--ckpt", tiny_chat_ckpt, "--qa", QA, "--report", "", flag,
            "99999999999999999999999", fragment=flag)


@pytest.mark.parametrize("flags, fragment", [(["--data", "folder"], "folder"), (["--data", "missing.txt"], "not found"),
                                             (["--vocab-size", "0"], "vocab size 0")])
def test_tokenizer_benchmark_checks_its_input_first(workdir, capsys, monkeypatch, flags, fragment):
    import tokenizer_benchmark
    monkeypatch.chdir(workdir)
    refused(capsys, tokenizer_benchmark, *flags, fragment=fragment)


def test_resuming_a_run_that_is_done_leaves_it_as_it_is(workdir, capsys):
    before = snapshot(workdir)
    refused(capsys, train, *tiny_train(workdir, "--ckpt", workdir / "base.pth", "--metrics", "", "--resume",
                                       "--max-iters", "5"), fragment="at step 30 already")
    assert snapshot(workdir) == before


# -------------------------------------------------------------- 7: a closed stdout

def test_a_closed_stdout_ends_generation_quietly(tiny_ckpt):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "generate.py"), "--ckpt", tiny_ckpt, "--length",
                             "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(10)) == 10  # `| head -c 10`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_a_closed_stdout_still_lets_the_tokenizer_be_written(tmp_path, small_corpus):
    out = tmp_path / "tok.json"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_tokenizer.py"), "--data", small_corpus,
                             "--vocab-size", "300", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads: the first progress line meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
    assert out.exists()


# ------------------------------------------------------------ 8: messages that say what is wrong

def test_a_folder_as_data_is_called_a_folder(workdir, capsys):
    refused(capsys, train, *tiny_train(workdir, "--ckpt", workdir / "a.pth", "--metrics", "")[2:], "--data",
            workdir / "folder", fragment="is a folder")


def test_a_pattern_that_matches_nothing_is_refused(workdir, capsys):
    for pattern in ("", "a*", r"\p{L}+"):  # empty; matches empty text; skips spaces and punctuation
        refused(capsys, train_tokenizer, "--data", workdir / "corpus.txt", "--vocab-size", "300", "--out",
                workdir / "t.json", "--pattern", pattern, fragment="pattern")
    assert not (workdir / "t.json").exists()


def test_unknown_characters_in_the_data_name_the_file_and_a_fix(workdir, capsys):
    odd = workdir / "odd.txt"
    odd.write_text(open(workdir / "corpus.txt", encoding="utf-8").read() + "你好\n", encoding="utf-8")
    message = refused(capsys, evaluate, "--ckpt", workdir / "chat.pth", "--qa", workdir / "qa.jsonl", "--data", odd,
                      "--report", "", "--samples", "0")
    assert str(odd) in message and "'你'" in message and "train a model" in message


def test_a_nan_loss_in_a_fresh_run_does_not_claim_a_checkpoint(workdir, capsys):
    message = refused(capsys, train, *tiny_train(workdir, "--ckpt", workdir / "a.pth", "--metrics", "",
                                                 "--lr", "1e30", "--optimizer", "sgd", "--max-iters", "30"))
    assert "nothing was saved" in message and not (workdir / "a.pth").exists()


# ----------------------------------------------------------- 9: chat input as people type it

@pytest.mark.parametrize("typed, stored", [
    ("Who was Hector's father?", "Who was Hector’s father?"),
    ('He said "go" now', "He said “go” now"),
    ("'Sing,' she said", "‘Sing,’ she said"),
    ("wait\u2026", "wait..."),
    ("non\u00a0breaking", "non breaking"),
])
def test_typographic_variants_map_to_what_the_vocabulary_has(typed, stored):
    from tokenizer import CharTokenizer, fit_typed_text
    tok = CharTokenizer(open(os.path.join(ROOT, "data.txt"), encoding="utf-8").read())
    assert fit_typed_text(tok, typed) == stored
    assert fit_typed_text(tok, stored) == stored  # what the vocabulary has stays as it is


def test_a_question_typed_with_a_straight_apostrophe_is_answered(tiny_chat_ckpt):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "generate.py"), "--ckpt", tiny_chat_ckpt, "--chat",
                             "Who was Hector's father?", "--length", "5"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "lacks" not in result.stderr, result.stderr


@settings(max_examples=25, deadline=None)
@given(prompt=st.binary(max_size=40))
def test_any_bytes_as_a_prompt_are_answered_or_named(tiny_ckpt, prompt):
    from checkpoint import load_model
    from errors import UserError
    from sampling import Sampling, stream_text, text_prompt
    model, tokenizer, _ = load_model(tiny_ckpt)
    text = prompt.decode("utf-8", errors="replace")
    try:
        ids, sampling = text_prompt(tokenizer, text, Sampling(3, seed=0))
    except UserError as e:
        assert "lacks" in str(e)
        return
    assert len("".join(stream_text(model, tokenizer, ids, sampling))) <= 3

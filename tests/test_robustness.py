"""Careless and hostile input to every script: one line on stderr, exit status 2, no traceback, no file lost.

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
from hypothesis import given, settings, strategies as st

import evaluate
import generate
import make_qa
import nanogpt_benchmark
import serve
import serve_benchmark
import sft
import train
import train_tokenizer
from conftest import QA, ROOT, TINY, refused


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


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

@pytest.mark.parametrize("case, fragment", [
    ("ckpt-is-data", "--ckpt {}/corpus.txt is also an input"),
    ("metrics-is-data", "--metrics {}/corpus.txt is also an input"),
    ("plot-is-data", "--plot {}/corpus.txt is also an input"), ("metrics-exists", "(--metrics) already exists"),
    ("ckpt-in-missing-folder", "folder {}/nowhere does not exist"), ("ckpt-is-folder", "--ckpt {}/folder is a folder"),
    ("metrics-in-missing-folder", "folder {}/no does not exist"), ("plot-is-folder", "--plot {}/folder is a folder"),
    ("same-ckpt-and-metrics", "must be three different files")])
def test_train_outputs(workdir, capsys, case, fragment):
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
    refused(capsys, train, *tiny_train(workdir, "--metrics", workdir / "m.csv", *flags),
            fragment=fragment.format(workdir))
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
    refused(capsys, make_qa, "--facts", facts, "--out", facts, fragment=f"--out {facts} is also an input")
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


@pytest.mark.parametrize("when", ["before-the-first-save", "after-a-save"])
def test_a_run_killed_while_it_holds_the_lock_blocks_no_one(tmp_path, small_corpus, when):
    """kill -9 runs no cleanup: the lock file stays behind, but the OS dropped the lock with the process."""
    ckpt, lock = tmp_path / "run.pth", tmp_path / ".run.pth.lock"
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data", small_corpus, *TINY, "--ckpt", str(ckpt),
               "--metrics", "", "--eval-interval", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([*command, "--max-iters", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        waited_for = lock if when == "before-the-first-save" else ckpt
        while not waited_for.exists() and first.poll() is None:
            time.sleep(0.01)
        if when == "after-a-save":
            time.sleep(0.5)  # more saves under way: the kill may land in the middle of one
        first.send_signal(signal.SIGKILL)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == -signal.SIGKILL and lock.exists(), err[-2000:]  # killed while it held the lock
    if when == "after-a-save":
        assert torch.load(ckpt, weights_only=True)["step"] >= 5  # whole: saves are atomic
    elif ckpt.exists():  # the first save won the race with the kill: whole all the same
        torch.load(ckpt, weights_only=True)
    second = subprocess.run([*command, "--max-iters", "3", "--overwrite"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["step"] == 3
    assert sorted(os.listdir(tmp_path)) == ["run.pth"]  # the stale lock and any half-written temporary are gone


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


# each mutation, and what its refusal says
CHECKPOINT_MUTATIONS = {
    "shape": "wte.weight is (66, 16), the config makes it (66, 32)",
    "huge": "the config makes a far larger model",
    "extra-field": "unknown transformer config fields: flux_capacitor",
    "ill-typed-field": "n_layer must be a whole number",
    "nan-weights": "NaN, infinite or absurdly large",
    "tokenizer-without-chars": "'chars' must be a list",
    "tokenizer-kind": "unknown tokenizer kind 'words'",
    "string-version": "format_version must be an integer",
    "model-type": "unknown model_type 'lstm-ish'",
    "vocab": "its tokenizer has 65 tokens but the model 66",
}


@pytest.mark.parametrize("case", list(CHECKPOINT_MUTATIONS))
def test_a_damaged_checkpoint_is_refused_by_every_reader(tmp_path, tiny_ckpt, capsys, case):
    path = tmp_path / f"{case}.pth"
    torch.save(mutate(torch.load(tiny_ckpt, weights_only=True), case), path)
    before = snapshot(tmp_path)
    for script, flags in ((generate, ["--length", "3"]), (evaluate, ["--qa", QA, "--report", "", "--samples", "0"])):
        message = refused(capsys, script, "--ckpt", path, *flags, fragment=CHECKPOINT_MUTATIONS[case])
        assert str(path) in message
    assert snapshot(tmp_path) == before


DAMAGED_STATE = "cannot be resumed: its step, history, random-generator states or weight average are damaged"


@pytest.mark.parametrize("key, value, fragment", [
    ("step", "3", DAMAGED_STATE), ("step", -1, DAMAGED_STATE), ("rng", None, DAMAGED_STATE),
    ("rng", {"torch": 1}, DAMAGED_STATE),
    ("rng", {"torch": torch.get_rng_state(), "batches": torch.Generator().get_state(),
             "batch_order": torch.tensor([10 ** 9])}, "its optimizer or generator state does not fit"),
    ("history", "rows", DAMAGED_STATE), ("best_val_loss", "low", DAMAGED_STATE),
    ("weight_average", [1.0], DAMAGED_STATE),
    ("weight_average", {"steps": 2, "weights": {"wte.weight": torch.zeros(1)}}, "its weight average does not fit"),
    ("optimizer", None, "holds no optimizer state, so it cannot be resumed"),
    ("run_config", ["--lr"], "is damaged: run_config must be a dict")])
def test_a_checkpoint_that_cannot_resume_says_so(workdir, capsys, key, value, fragment):
    path = workdir / "damaged.pth"
    torch.save({**torch.load(workdir / "base.pth", weights_only=True), key: value}, path)
    before = snapshot(workdir)
    message = refused(capsys, train, *tiny_train(workdir, "--ckpt", path, "--metrics", "", "--resume",
                                                 "--max-iters", "40"), fragment=fragment)
    assert str(path) in message
    assert snapshot(workdir) == before


# ------------------------------------------------------------------- 6: numbers

TRAIN_FLOATS = {"--lr": [0, -1e-3], "--muon-lr": [0], "--beta2": [1.5, 1.0, -0.1], "--min-lr-ratio": [-5, 1.5],
                "--grad-clip": [-1], "--time-limit": [-1], "--average-last": [-0.1, 1.5], "--weight-decay": [-0.1], "--dropout": [1.0, -0.5],
                "--val-fraction": [0, 1, -0.1]}
SAMPLING_FLOATS = {"--temp": [-0.5], "--top-p": [0, 1.5]}
NOT_A_NUMBER = [math.nan, math.inf, -math.inf]


def every_pair(flags):
    """Each (flag, value) of a {flag: [values out of range]} table, and NaN and both infinities for every flag."""
    return [(flag, value) for flag in sorted(flags) for value in flags[flag] + NOT_A_NUMBER]


@pytest.mark.parametrize("flag, value", every_pair(TRAIN_FLOATS))
def test_every_float_flag_of_training_refuses_nan_infinity_and_out_of_range(capsys, flag, value):
    for script in (train, sft) if flag not in ("--dropout", "--val-fraction") else (train,):
        refused(capsys, script, flag, repr(value) if isinstance(value, float) else str(value), "--data", "missing.txt",
                fragment=flag)


@pytest.mark.parametrize("flag, value", every_pair(SAMPLING_FLOATS))
def test_every_float_flag_of_sampling_refuses_nan_infinity_and_out_of_range(tiny_ckpt, capsys, flag, value):
    refused(capsys, generate, "--ckpt", tiny_ckpt, flag, repr(value), fragment=flag)


def test_the_tables_hold_every_case():
    assert len(every_pair(TRAIN_FLOATS)) == 48 and len(every_pair(SAMPLING_FLOATS)) == 9


@pytest.mark.parametrize("flags, fragment", [
    (["--seed", "123456789012345678901234"], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--warmup-iters", "-10"], "--warmup-iters"),
    (["--max-iters", "-1"], "--max-iters"),
    (["--batch-size", "0"], "--batch-size"),
    (["--log-interval", "0"], "--log-interval"),
    (["--n-embd", "10000000", "--n-head", "1", "--max-iters", "1"], "parameters"),
    (["--n-layer", "99999999999999999999999", "--max-iters", "1"], "from 1 to 1,000"),
    (["--n-layer", "100000", "--n-embd", "16", "--max-iters", "1"], "from 1 to 1,000"),  # small, but slow to build
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
    import chat
    from checkpoint import load_model
    from sampling import Sampling
    # short enough for the tiny model's context to keep it whole (no notice on stderr): the apostrophe is read
    result = subprocess.run([sys.executable, os.path.join(ROOT, "generate.py"), "--ckpt", tiny_chat_ckpt, "--chat",
                             "Hector's?", "--length", "5", "--temp", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # the answer to the question as the vocabulary spells it, greedy: the same prompt, so the same answer
    model, tokenizer, _ = load_model(tiny_chat_ckpt)
    assert result.stdout == chat.answer(model, tokenizer, "Hector’s?", Sampling(5, temperature=0)) + "\n"


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
    assert len("".join(stream_text(model, tokenizer, ids, sampling))) == 3  # a character a token, none special


# ------------------------------------------------ 10: the server's and the benchmarks' flags

@pytest.mark.parametrize("script, flags, fragment", [
    (serve, ["--port", "70000"], "--port must be in [0, 65535]"),
    (serve, ["--port", "-1"], "--port must be in [0, 65535]"),
    (serve, ["--port", "http"], "argument --port: invalid int value"),
    (serve, ["--threads", "257"], "--threads must be in [1, 256]"),
    (serve, ["--max-batch", "4097"], "--max-batch must be in [1, 4096]"),
    (serve, ["--api-key", " "], "--api-key must not be empty"),
    (serve, ["--device", "quantum"], "argument --device: invalid choice"),
    (serve, ["--bogus"], "unrecognized arguments: --bogus"),
    (serve_benchmark, ["--clients", "0"], "--clients must each be in [1, 256]"),
    (serve_benchmark, ["--clients", "1", "257"], "--clients must each be in [1, 256]"),
    (serve_benchmark, ["--max-tokens", "0"], "--max-tokens must be in [1, 100000]"),
    (serve_benchmark, ["--seconds", "0"], "--seconds must be in (0, 1e6)"),
    (serve_benchmark, ["--seconds", "inf"], "--seconds must be in (0, 1e6)"),
    (serve_benchmark, ["--seconds", "nan"], "--seconds must be in (0, 1e6)"),
    (serve_benchmark, ["--ckpt", "missing.pth"], "checkpoint missing.pth not found"),
    (serve_benchmark, ["--ckpt", "chat.pth", "--qa", "missing.jsonl"], "--qa missing.jsonl not found"),
    (nanogpt_benchmark, [], "the following arguments are required: --nanogpt"),
    (nanogpt_benchmark, ["--nanogpt", "folder"], "folder is not a nanoGPT checkout: it has no train.py"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--ours", "base.pth"], "--ours and --ours-seconds go together"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--ours", "base.pth", "--ours-seconds", "0"],
     "--ours-seconds must be > 0"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--ours", "base.pth", "--ours-seconds", "nan"],
     "--ours-seconds must be > 0"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--work", "corpus.txt"], "--work corpus.txt is a file"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--work", "nanoGPT"], "--work nanoGPT is not empty"),
    (nanogpt_benchmark, ["--nanogpt", "nanoGPT", "--data", "missing.txt"], "missing.txt not found"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else getattr(v, "__name__", None))
def test_bad_flags_of_the_server_and_the_benchmarks_exit_2_before_any_work(workdir, capsys, monkeypatch, script,
                                                                            flags, fragment):
    """Refused as the command line would be (status 2, one line): no server started, no benchmark run."""
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):  # enough for its check
        (workdir / "nanoGPT" / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "nanoGPT" / name).write_text("")
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    refused(capsys, script, *flags, fragment=fragment)
    assert snapshot(workdir) == before


# ------------------------------------------------------------- what the 2026-11-30 sweep found

@pytest.mark.parametrize("change, fragment", [
    ({"data": ["x"]}, "training data must be a path"), ({"data": 7}, "training data must be a path"),
    ({"val_fraction": "x"}, "val_fraction"), ({"val_fraction": float("nan")}, "val_fraction"),
    ({"val_fraction": 1.5}, "val_fraction"), ({"val_fraction": True}, "val_fraction"),
])
@pytest.mark.parametrize("script", ["sft", "evaluate", "train --init-from", "generate"])
def test_recorded_flags_a_loader_reads_are_checked(workdir, capsys, change, fragment, script):
    saved = torch.load(workdir / "chat.pth", weights_only=True)
    saved["run_config"].update(change)
    torch.save(saved, workdir / "odd.pth")
    before = snapshot(workdir)
    argv = {"sft": (sft, ["--init-from", "odd.pth", "--qa", "qa.jsonl", "--max-iters", "1", "--ckpt", "new.pth"]),
            "evaluate": (evaluate, ["--ckpt", "odd.pth", "--qa", "qa.jsonl", "--report", "", "--samples", "0"]),
            "train --init-from": (train, ["--init-from", "odd.pth", "--data", "corpus.txt", "--max-iters", "1",
                                          "--ckpt", "new.pth"]),
            "generate": (generate, ["--ckpt", "odd.pth", "--length", "3"])}[script]
    os.chdir(workdir)
    refused(capsys, argv[0], *argv[1], fragment=fragment)
    assert snapshot(workdir) == before


def test_a_rotary_base_below_1_is_refused(workdir, capsys):
    saved = torch.load(workdir / "base.pth", weights_only=True)
    saved["model_config"].update(positions="rope", rope_theta=1e-300)
    torch.save(saved, workdir / "odd.pth")
    refused(capsys, generate, "--ckpt", workdir / "odd.pth", "--length", "3", fragment="rope_theta must be")


@pytest.mark.parametrize("script, argv, fragment", [
    (train_tokenizer, ["--data", "corpus.txt", "--out", "t.json", "--vocab-size", str(10 ** 30)], "too large"),
    (generate, ["--ckpt", "base.pth", "--length", "1000001"], "--length must be in"),
    (make_qa, ["--check", ""], "is empty"),
])
def test_numbers_and_paths_beyond_any_use_are_refused(workdir, capsys, monkeypatch, script, argv, fragment):
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    refused(capsys, script, *argv, fragment=fragment)
    assert snapshot(workdir) == before


@pytest.mark.parametrize("ckpt, qa_split, flags, fragment", [
    ("base.pth", "test", [], "is a base model"),
    ("chat.pth", "train", [], "no test questions"),
    ("garbage.pth", "test", [], "not a readable b_lm checkpoint"),
])
def test_serve_benchmark_refuses_what_serve_would_in_one_line(workdir, capsys, monkeypatch, ckpt, qa_split,
                                                               flags, fragment):
    monkeypatch.chdir(workdir)
    (workdir / "garbage.pth").write_bytes(b"not a checkpoint")
    rows = [line for line in open(QA, encoding="utf-8") if f'"split": "{qa_split}"' in line]
    (workdir / "some.jsonl").write_text("".join(rows[:5]), encoding="utf-8")
    refused(capsys, serve_benchmark, "--ckpt", ckpt, "--qa", "some.jsonl", "--seconds", "1", *flags,
            fragment=fragment)


def test_a_failed_nanogpt_benchmark_leaves_its_folder_as_it_found_it(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):  # logs nothing
        os.makedirs(os.path.dirname(workdir / "nanogpt" / name), exist_ok=True)
        (workdir / "nanogpt" / name).write_text("")
    (workdir / "empty").mkdir()
    before = snapshot(workdir)
    for work in ("new", "empty"):
        refused(capsys, nanogpt_benchmark, "--nanogpt", "nanogpt", "--data", "corpus.txt", "--ours", "base.pth",
                "--ours-seconds", "1", "--work", work, fragment="iteration times")
    assert snapshot(workdir) == before and not (workdir / "new").exists() and os.listdir(workdir / "empty") == []
    refused(capsys, nanogpt_benchmark, "--nanogpt", "nanogpt", "--data", "corpus.txt", "--ours", "base.pth",
            "--ours-seconds", "1", "--work", "corpus.txt/x", fragment="does not exist")


def test_ctrl_c_at_the_repls_prompt_is_one_line_and_status_130(tiny_chat_ckpt):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "interactive_generate.py"), "--ckpt", tiny_chat_ckpt],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("loaded ")  # it waits at its prompt now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "interrupted", (proc.returncode, err)


@pytest.mark.parametrize("content, fragment", [
    (b"step,elapsed_s,val_loss\n1,1.0,\x004\n", "not a number"),
    (b"step,elapsed_s,val_loss\n1,1.0," + b"9" * 200_000 + b"\n", "cannot read"),
])
def test_a_metrics_csv_the_csv_reader_refuses_is_one_line(tmp_path, capsys, content, fragment):
    import plots
    (tmp_path / "odd.csv").write_bytes(content)
    refused(capsys, plots, "a=" + str(tmp_path / "odd.csv"), "--out", tmp_path / "out.png", fragment=fragment)
    assert not (tmp_path / "out.png").exists()

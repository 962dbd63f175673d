"""Shared fixtures: tiny corpora and a tiny trained checkpoint, so the suite stays fast."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATA = os.path.join(ROOT, "data.txt")

# Tiny models gain nothing from a second thread, and on a busy 2-core machine
# two threads per process make them many times slower.
torch.set_num_threads(1)

# A tiny model: every test that trains uses these flags (plus its own).
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--eval-tokens", "256", "--warmup-iters", "2", "--plot", ""]


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    """Keep the tokenized-corpus cache out of the user's home directory."""
    monkeypatch.setenv("B_LM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


@pytest.fixture(autouse=True)
def _denormals_kept():
    """Training turns on flush-to-zero for the whole process; keep it from leaking into the next test."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The first 20,000 characters of the Iliad."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    with open(DATA, encoding="utf-8") as f:
        path.write_text(f.read(20_000), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, small_corpus):
    """A checkpoint of a tiny Transformer trained for 30 steps."""
    folder = tmp_path_factory.mktemp("tiny")
    os.environ.setdefault("B_LM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))
    ckpt = str(folder / "tiny.pth")
    import train
    # An earlier default recipe (Muon lr 0.02, 10% decay, no Muon weight decay, random draws): the chat
    # model tuned from this one answers at length, which the streaming tests need to see more than one chunk.
    train.main(["--data", small_corpus, "--ckpt", ckpt, "--max-iters", "30", "--eval-interval", "15",
                "--muon-lr", "0.02", "--min-lr-ratio", "0.1", "--muon-weight-decay", "0", "--data-order", "random",
                "--metrics", str(folder / "m.csv"), *TINY])
    return ckpt


INTERRUPT_POINTS = ("forward", "backward", "optimizer", "save")


def interrupt_during(monkeypatch, where, call=3, times=1):
    """Send this process a real SIGINT (Ctrl-C) from inside the call-th call of `where`, `times` times over.

    where is one of INTERRUPT_POINTS: the model's training forward pass, a
    backward pass, an optimizer step, or a checkpoint save.
    """
    import trainer
    from transformer import Transformer
    calls = {"n": 0}

    def fire():
        calls["n"] += 1
        if calls["n"] == call:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

    if where == "forward":
        real_forward = Transformer.forward

        def forward(self, *args, **kwargs):
            if self.training:
                fire()
            return real_forward(self, *args, **kwargs)
        monkeypatch.setattr(Transformer, "forward", forward)
    elif where == "backward":
        real_backward = torch.Tensor.backward

        def backward(self, *args, **kwargs):
            fire()
            return real_backward(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, "backward", backward)
    elif where == "optimizer":
        real_build = trainer.build_optimizer

        def build(*args, **kwargs):
            optimizer = real_build(*args, **kwargs)
            real_step = optimizer.step

            def step(*a, **k):
                fire()
                return real_step(*a, **k)
            optimizer.step = step
            return optimizer
        monkeypatch.setattr(trainer, "build_optimizer", build)
    else:
        real_save = trainer.save_checkpoint

        def save(path, checkpoint):
            fire()
            return real_save(path, checkpoint)
        monkeypatch.setattr(trainer, "save_checkpoint", save)


def signal_training_run(command, ckpt, signum):
    """Start a long training run (command, a list), send it signum once it first saves ckpt; (returncode, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        while not os.path.exists(ckpt) and proc.poll() is None:  # the first save: training is under way
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


def run_script(script, *args, stdin=None, cwd=None):
    """Run one of the project's scripts in a subprocess; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], input=stdin, cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run a script's main in this process as its command line would: cli(module, *args, stdin=...).

    Returns a CompletedProcess like run_script's, without the second or two a
    new Python spends importing torch; an exception that escapes run_main
    (a traceback) fails the test.
    """
    import io
    from errors import run_main

    def run(script, *args, stdin=""):
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = 0
        try:
            run_main(script.main, [str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([script.__name__, *args], code, out, err)
    return run


def assert_clean_error(result, *fragments):
    """A user error: exit status 2, one line 'error: ...' on stderr mentioning the fragments, no traceback.

    (A stop from outside is status 130 and 'interrupted': tests of those check that themselves.)
    """
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def short_context_ckpts(tmp_path_factory, small_corpus):
    """{block_size: (base, chat)} for contexts of 1 to 5 tokens, trained one step; chat is base marked as a chat
    model (sft.py refuses contexts this short, but a checkpoint can say anything), for the edge of chat's room."""
    import train
    folder = tmp_path_factory.mktemp("short-context")
    os.environ.setdefault("B_LM_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))
    paths = {}
    for block in range(1, 6):
        base, chat = str(folder / f"block{block}.pth"), str(folder / f"block{block}-chat.pth")
        train.main(["--data", small_corpus, "--ckpt", base, "--metrics", "", *TINY, "--block-size", str(block),
                    "--max-iters", "1"])
        torch.save({**torch.load(base, weights_only=True), "chat": True}, chat)
        paths[block] = (base, chat)
    return paths


QA = os.path.join(ROOT, "qa.jsonl")


@pytest.fixture(scope="session")
def tiny_chat_ckpt(tmp_path_factory, tiny_ckpt):
    """tiny_ckpt fine-tuned by sft.py on qa.jsonl for 30 steps: a (poor) chat model."""
    ckpt = str(tmp_path_factory.mktemp("tiny-chat") / "chat.pth")
    import sft
    # Questions as written (no shuffled words), the answers' loss only and random draws, as before: this model answers
    # at length, as the tests need.
    sft.main(["--init-from", tiny_ckpt, "--qa", QA, "--ckpt", ckpt, "--max-iters", "30", "--batch-size", "8",
              "--eval-interval", "15", "--eval-tokens", "256", "--warmup-iters", "2", "--lr", "1e-2",
              "--shuffle-words", "0", "--question-loss", "0", "--data-order", "random", "--metrics", ckpt + ".csv",
              "--plot", ""])
    return ckpt


@pytest.fixture
def home(tmp_path, small_corpus, tiny_ckpt, tiny_chat_ckpt, monkeypatch):
    """A user's working folder (also the current one): a corpus, a Q&A file, two checkpoints, a pipe, and
    links: to the pipe, to /dev/null, to the corpus (soft and hard), to nothing, and to itself."""
    shutil.copy(small_corpus, tmp_path / "corpus.txt")
    shutil.copy(QA, tmp_path / "qa.jsonl")
    shutil.copy(tiny_ckpt, tmp_path / "base.pth")
    shutil.copy(tiny_chat_ckpt, tmp_path / "chat.pth")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "link-to-pipe")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.link(tmp_path / "corpus.txt", tmp_path / "hard-corpus.txt")
    os.symlink(tmp_path / "corpus.txt", tmp_path / "soft-corpus.txt")
    os.symlink("/dev/null", tmp_path / "link-to-null")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refused(capsys, script, *argv, fragment=""):
    """Run script.main(argv) as its command line would; assert a clean refusal and return the message."""
    from errors import run_main
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

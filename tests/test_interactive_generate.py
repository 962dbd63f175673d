import os
import subprocess
import sys

import pytest

import interactive_generate
from conftest import ROOT, assert_clean_error, run_script


def test_prompts_continuations_and_quit(tiny_ckpt):
    stdin = "Sing, \n\nZeus 你\nquit\nnever read\n"
    result = run_script("interactive_generate.py", "--ckpt", tiny_ckpt, "--length", "20", "--seed", "1",
                        stdin=stdin)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("loaded ") and out.rstrip().endswith("bye")
    assert out.count("> ") == 4  # three prompts answered, the fourth read 'quit'
    assert "error: the text has characters the model's vocabulary lacks: 'Z', '你'" in out
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("ending", ["exit\n", "q\n", ":q\n", ""])
def test_every_way_out_ends_cleanly(tiny_ckpt, cli, ending):
    result = cli(interactive_generate, "--ckpt", tiny_ckpt, "--length", "5", stdin="Sing\n" + ending)
    assert result.returncode == 0 and result.stdout.rstrip().endswith("bye"), result.stderr


@pytest.mark.parametrize("flags, fragment", [
    (["--length", "-1"], "--length must be in [0, 1,000,000]"),
    (["--temp", "nan"], "--temp must be a number >= 0"),
    (["--temp", "-1"], "--temp must be a number >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
    (["--length", "ten"], "argument --length: invalid int value"),
    (["--device", "quantum"], "argument --device: invalid choice"),
    (["--chat", "--completion"], "not allowed with argument"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--chat"], "is not a chat model"),
])
def test_bad_flags_exit_2_before_the_session_starts(tiny_ckpt, cli, flags, fragment):
    result = cli(interactive_generate, "--ckpt", tiny_ckpt, *flags, stdin="Sing\nquit\n")
    assert_clean_error(result, fragment)
    assert result.stdout == ""


def test_a_missing_checkpoint_exits_2(tmp_path, cli):
    assert_clean_error(cli(interactive_generate, "--ckpt", tmp_path / "none.pth"), "none.pth not found")


def test_a_line_that_is_not_utf8_is_answered_and_the_session_goes_on(tiny_ckpt):
    """Typed bytes that are not UTF-8 (a terminal in another encoding) are named, as unknown characters are."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", OMP_NUM_THREADS="1")  # as under en_US.UTF-8
    result = subprocess.run([sys.executable, os.path.join(ROOT, "interactive_generate.py"), "--ckpt", tiny_ckpt,
                             "--length", "4"], input=b"Sing\xff\nSing\nquit\n", capture_output=True, env=env,
                            timeout=120)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert "error: the text has characters the model's vocabulary lacks: '\\udcff'" in out
    assert out.count("> ") == 3 and out.rstrip().endswith("bye")  # the next prompt was answered


def test_a_closed_stdout_ends_the_session_quietly(tiny_ckpt):
    """`interactive_generate.py | head -c 10`: the session ends when its reader goes, at once, with no traceback.

    A million tokens take minutes: only a session that stops when its reader goes ends within the timeout.
    """
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "interactive_generate.py"), "--ckpt", tiny_ckpt,
                             "--length", "1000000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        proc.stdin.write(b"Sing\nquit\n")
        proc.stdin.close()
        assert len(proc.stdout.read(10)) == 10
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    err = proc.stderr.read().decode()
    assert err == "", err

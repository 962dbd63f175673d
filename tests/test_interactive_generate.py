import pytest

import interactive_generate
from conftest import run_script


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

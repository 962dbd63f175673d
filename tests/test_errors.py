"""run_main: what a user sees when a script stops early."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from errors import UserError, run_main


def test_a_user_error_is_one_line_and_status_2(capsys):
    def main(argv):
        raise UserError("data file nope.txt not found")
    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: data file nope.txt not found\n"


def test_an_interrupt_is_one_line_and_status_130(capsys):
    def main(argv):
        raise KeyboardInterrupt  # Ctrl-C, or a SIGTERM, in a script with nothing to save
    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# Scripts whose imports take a while (torch): long enough to be stopped while they load.
SLOW_TO_LOAD = ["train.py", "sft.py", "generate.py", "interactive_generate.py", "evaluate.py", "convert.py",
                "serve.py", "timing.py", "nanogpt_benchmark.py"]


def loading_libraries(pid):
    """Whether the process has begun to load torch, numpy or matplotlib (Linux: its memory maps)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
    except OSError:
        return False
    return any(name in maps for name in ("libtorch", "numpy", "matplotlib"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("script", SLOW_TO_LOAD)
def test_a_stop_while_a_script_loads_is_one_line_and_status_130(script, signum):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), "--help"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not loading_libraries(proc.pid):
            time.sleep(0.002)
        proc.send_signal(signum)  # in the middle of its imports
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip() == "interrupted", (proc.returncode, err)


def test_a_stop_after_the_work_is_done_no_longer_kills_the_script():
    # Python restores the signals' defaults while it shuts down; a stop then would end the run killed.
    code = ("import os, signal, sys; sys.path.insert(0, %r); import errors\n"
            "errors.run_main(lambda argv: print('done'))\n"
            "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT); print('still here')" % ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\nstill here\n", "")

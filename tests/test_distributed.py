import os
import signal
import subprocess
import sys

import torch

from conftest import QA, ROOT, TINY, signal_training_run


def two_processes_and_one(script, flags, tmp_path):
    """Run script under torchrun with 2 gloo processes, then as one process; (two, one) checkpoints.

    Both runs must succeed, and the two processes must end with identical parameters.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, script), *flags, "--ckpt", str(tmp_path / "two.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "parameters identical on all 2 processes: yes" in two.stdout
    assert two.stdout.count("final: ") == 1  # only rank 0 reports and saves
    one = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags, "--ckpt", str(tmp_path / "one.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    return torch.load(tmp_path / "two.pth", weights_only=True), torch.load(tmp_path / "one.pth", weights_only=True)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, small_corpus):
    flags = ["--data", small_corpus, *TINY, "--max-iters", "6", "--grad-accum", "2", "--device", "cpu",
             "--metrics", ""]
    a, b = two_processes_and_one("train.py", flags, tmp_path)
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)


def test_ctrl_c_stops_every_process_and_rank_0_saves(tmp_path, small_corpus):
    ckpt = tmp_path / "run.pth"
    # SIGINT is Ctrl-C in the terminal; torchrun passes it on to its workers.
    _, err = signal_training_run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "train.py"), "--data", small_corpus, *TINY, "--device", "cpu", "--grad-accum", "2",
         "--max-iters", "1000000", "--eval-interval", "2", "--metrics", "", "--ckpt", str(ckpt)], ckpt, signal.SIGINT)
    assert err.count("interrupted at step") == 1, err[-2000:]  # rank 0 saved; rank 1 left quietly
    assert torch.load(ckpt, weights_only=True)["step"] >= 2


def test_fine_tuning_on_two_gloo_processes_matches_one_process(tmp_path, tiny_ckpt):
    flags = ["--init-from", tiny_ckpt, "--qa", QA, "--max-iters", "4", "--batch-size", "8", "--eval-tokens", "256",
             "--warmup-iters", "2", "--lr", "1e-2", "--grad-accum", "2", "--device", "cpu", "--metrics", "",
             "--plot", ""]
    a, b = two_processes_and_one("sft.py", flags, tmp_path)
    assert a["chat"] and b["chat"] and a["step"] == b["step"] == 4
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)

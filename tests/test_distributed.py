import os
import signal
import subprocess
import sys

import torch

from conftest import ROOT, TINY, signal_training_run


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, small_corpus):
    flags = ["--data", small_corpus, *TINY, "--max-iters", "6", "--grad-accum", "2", "--device", "cpu",
             "--metrics", ""]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "train.py"), *flags, "--ckpt", str(tmp_path / "two.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "parameters identical on all 2 processes: yes" in two.stdout
    assert two.stdout.count("final: ") == 1  # only rank 0 reports and saves
    one = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags, "--ckpt", str(tmp_path / "one.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a = torch.load(tmp_path / "two.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "one.pth", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


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
    from conftest import QA
    flags = ["--init-from", tiny_ckpt, "--qa", QA, "--max-iters", "4", "--batch-size", "8", "--eval-tokens", "256",
             "--warmup-iters", "2", "--lr", "1e-2", "--grad-accum", "2", "--device", "cpu", "--metrics", "",
             "--plot", ""]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "sft.py"), *flags, "--ckpt", str(tmp_path / "two.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "parameters identical on all 2 processes: yes" in two.stdout
    one = subprocess.run([sys.executable, os.path.join(ROOT, "sft.py"), *flags, "--ckpt", str(tmp_path / "one.pth")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    a = torch.load(tmp_path / "two.pth", weights_only=True)
    b = torch.load(tmp_path / "one.pth", weights_only=True)
    assert a["chat"] and b["chat"] and a["step"] == b["step"] == 4
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)

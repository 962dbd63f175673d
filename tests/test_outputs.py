"""What a run writes never costs a user a file: every output flag of every script, every kind of path.

An output must be absent or a regular file; a folder output must be new, empty
or an earlier export of b_lm's; links (symbolic or hard) name the file they
point at, for the input checks and for the lock that keeps a second run off a
running one's checkpoint. Each case asserts that everything that was there
before is there after, byte for byte and of the same kind.
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

import convert
import evaluate
import files
import hf
import make_qa
import plots
import sft
import train
import train_tokenizer
from conftest import ROOT, TINY, refused
from errors import UserError, run_main


def snapshot(folder):
    """{relative path: bytes, or the kind of a link, folder or special file} of everything under folder."""
    seen = {}
    for base, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = os.path.join(base, name)
            key = os.path.relpath(path, folder)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                seen[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    seen[key] = (os.lstat(path).st_ino, f.read())
            else:
                seen[key] = ("folder" if stat.S_ISDIR(mode) else "special", stat.S_IFMT(mode))
    return seen


# Every flag that names a file a script writes, with the rest of a command that would otherwise run.
FILE_OUTPUTS = {
    "train --ckpt": (train, ["--data", "corpus.txt", *TINY, "--max-iters", "1", "--metrics", "", "--overwrite",
                             "--ckpt"]),
    "train --metrics": (train, ["--data", "corpus.txt", *TINY, "--max-iters", "1", "--ckpt", "new.pth",
                                "--metrics"]),
    "train --plot": (train, ["--data", "corpus.txt", *TINY[:-2], "--max-iters", "1", "--ckpt", "new.pth",
                             "--metrics", "", "--plot"]),
    "sft --ckpt": (sft, ["--init-from", "base.pth", "--qa", "qa.jsonl", "--data", "corpus.txt", "--max-iters", "1",
                         "--metrics", "",
                         "--plot", "", "--overwrite", "--ckpt"]),
    "sft --metrics": (sft, ["--init-from", "base.pth", "--qa", "qa.jsonl", "--data", "corpus.txt", "--max-iters",
                            "1", "--ckpt", "new.pth", "--plot", "", "--metrics"]),
    "train_tokenizer --out": (train_tokenizer, ["--data", "corpus.txt", "--vocab-size", "300", "--overwrite",
                                                "--out"]),
    "evaluate --report": (evaluate, ["--ckpt", "chat.pth", "--qa", "qa.jsonl", "--data", "corpus.txt", "--samples",
                                     "0", "--overwrite", "--report"]),
    "make_qa --out": (make_qa, ["--overwrite", "--out"]),
    "convert from-hf": (convert, ["from-hf", "hf", "--overwrite"]),
    "plots --out": (plots, ["--overwrite", "a=run.csv", "--out"]),
}
METRICS = "step,elapsed_s,train_loss,val_loss\n10,1.5,4.0,3.9\n20,3.0,3.5,3.4\n"
# Paths no file output may take, with what the refusal says.
NOT_FILES = {"pipe": "not a regular file", "link-to-pipe": "not a regular file", "loop": "symbolic links",
             ".": "is a folder", "hard-corpus.txt": "input", "soft-corpus.txt": "input", "corpus.txt": "input"}


@pytest.mark.parametrize("output", FILE_OUTPUTS)
@pytest.mark.parametrize("path", NOT_FILES)
def test_no_file_output_replaces_a_special_file_a_folder_or_an_input(home, capsys, output, path):
    script, argv = FILE_OUTPUTS[output]
    (home / "run.csv").write_text(METRICS)
    if script is convert:
        os.mkdir(home / "hf")
        (home / "hf" / "config.json").write_text("{}")
    if script in (make_qa, plots) or (script is convert and path.endswith("corpus.txt")):
        path = "pipe" if path.endswith("corpus.txt") else path  # their inputs are other files (plots: below)
    before = snapshot(home)
    refused(capsys, script, *argv, path, fragment=NOT_FILES[path])
    assert snapshot(home) == before


@pytest.mark.parametrize("output", ["train --ckpt", "sft --ckpt", "train_tokenizer --out", "make_qa --out",
                                    "convert from-hf"])
def test_an_empty_output_path_is_refused_before_any_work(home, capsys, output):
    script, argv = FILE_OUTPUTS[output]
    if script is convert:
        os.mkdir(home / "hf")
    before = snapshot(home)
    refused(capsys, script, *argv, "")
    assert snapshot(home) == before


def test_special_files_and_links_to_them_are_refused_as_outputs():
    for path in ("/dev/null", "/dev/zero"):
        with pytest.raises(UserError, match="not a regular file"):
            files.check_output_path(path, "--ckpt")
    with pytest.raises(UserError, match="not a regular file"):
        with files.atomic_write("/dev/null"):
            pass
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_an_output_inside_an_input_folder_is_refused(home, capsys, gpt2_like_export):
    before = snapshot(home)
    for target in ("config.json", "model.safetensors", "new.pth"):  # its own files, and a new one beside them
        refused(capsys, convert, "from-hf", gpt2_like_export, gpt2_like_export / target, "--overwrite",
                fragment="input")
    assert snapshot(home) == before


@pytest.fixture
def gpt2_like_export(home):
    convert.main(["to-hf", str(home / "base.pth"), str(home / "export")])
    return home / "export"


# ------------------------------------------------------------- folders: to-hf --overwrite

def test_to_hf_never_replaces_the_current_folder_or_one_holding_an_input(home, capsys, tmp_path_factory):
    (home / "sub").mkdir()
    shutil.copy(home / "base.pth", home / "sub" / "base.pth")
    (home / "sub" / "deeper").mkdir()
    before = snapshot(home)
    cases = [(".", "current folder"), (str(home), "current folder"), ("..", "current folder"), ("/", "current"),
             ("sub", "holds an input"), ("sub/", "holds an input"), ("sub/.", "holds an input")]
    for out, fragment in cases:
        ckpt = "sub/base.pth" if out.startswith("sub") else "base.pth"
        refused(capsys, convert, "to-hf", ckpt, out, "--overwrite", fragment=fragment)
    os.chdir(home / "sub" / "deeper")  # a parent of the current folder, named from inside it
    refused(capsys, convert, "to-hf", home / "base.pth", home / "sub", "--overwrite", fragment="current folder")
    assert snapshot(home) == before


def test_to_hf_overwrite_replaces_only_an_export_of_b_lm_holding_nothing_else(home, capsys, gpt2_like_export):
    export = gpt2_like_export
    first = (export / "model.safetensors").read_bytes()
    convert.main(["to-hf", str(home / "chat.pth"), str(export), "--overwrite"])  # an export of ours: replaced
    assert (export / "model.safetensors").read_bytes() != first
    assert sorted(os.listdir(export)) == sorted(hf.EXPORT_FILES)
    assert not [n for n in os.listdir(home) if n.endswith(".tmp")]

    (export / "notes.txt").write_text("mine")  # an export with a file of the user's in it
    foreign = home / "downloaded"  # a Hugging Face folder b_lm did not write, with the same file names
    shutil.copytree(export, foreign)
    os.remove(foreign / "notes.txt")
    config = json.loads((foreign / "config.json").read_text())
    del config["exported_by"]
    (foreign / "config.json").write_text(json.dumps(config))
    nested = home / "nested"
    shutil.copytree(export, nested)
    os.remove(nested / "notes.txt")
    (nested / "sub").mkdir()
    os.symlink(home / "export", home / "link-to-export")
    before = snapshot(home)
    for out, fragment in ((export, "did not write"), (foreign, "did not write"), (nested, "did not write"),
                          (home / "link-to-export", "symbolic link"), (home / "corpus.txt", "is a file")):
        refused(capsys, convert, "to-hf", home / "base.pth", out, "--overwrite", fragment=fragment)
    refused(capsys, convert, "to-hf", home / "base.pth", "", fragment="empty")
    assert snapshot(home) == before


def test_to_hf_into_a_folder_that_does_not_exist_is_one_line(home, capsys):
    before = snapshot(home)
    refused(capsys, convert, "to-hf", "base.pth", "nowhere/out", fragment="does not exist")
    refused(capsys, convert, "to-hf", "base.pth", "corpus.txt/out", fragment="corpus.txt/out")
    assert snapshot(home) == before


# ------------------------------------------------------------- links and the lock on a running run

def test_a_link_to_a_running_runs_checkpoint_is_refused(tmp_path, small_corpus):
    ckpt = tmp_path / "run.pth"
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data", small_corpus, *TINY, "--ckpt", str(ckpt),
               "--metrics", ""]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([*command, "--max-iters", "2"], check=True, capture_output=True, env=env, timeout=120)
    # It resumes and saves nothing until stopped, so its checkpoint keeps its inode while the others try.
    first = subprocess.Popen([*command, "--resume", "--max-iters", "100000", "--eval-interval", "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while first.poll() is None and not (tmp_path / ".run.pth.lock").exists():
            time.sleep(0.05)
        time.sleep(0.5)
        os.symlink(ckpt, tmp_path / "soft.pth")
        os.link(ckpt, tmp_path / "hard.pth")
        for alias in ("soft.pth", "hard.pth"):
            second = subprocess.run([*command[:-4], "--metrics", "", "--ckpt", str(tmp_path / alias), "--resume",
                                     "--max-iters", "5"], capture_output=True, text=True, env=env, timeout=120)
            assert second.returncode == 2 and "in use by another run" in second.stderr, second.stderr
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err[-2000:]


def test_the_claim_follows_the_checkpoint_to_each_new_file(tmp_path):
    path, alias = tmp_path / "run.pth", tmp_path / "alias.pth"
    path.write_bytes(b"first")
    claim = ("import sys; sys.path.insert(0, %r); import files, errors\n"
             "try:\n    files.exclusive(%r, '--ckpt').__enter__()\nexcept errors.UserError:\n    sys.exit(3)")
    with files.exclusive(str(path), "--ckpt"):
        with files.atomic_write(str(path)) as f:  # a save: the name now points at a new file
            f.write(b"second")
        os.link(path, alias)
        taken = subprocess.run([sys.executable, "-c", claim % (ROOT, str(alias))], timeout=60)
        assert taken.returncode == 3
    assert subprocess.run([sys.executable, "-c", claim % (ROOT, str(alias))], timeout=60).returncode == 0


def test_an_output_through_a_symbolic_link_writes_the_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "real.pth", tmp_path / "link.pth"
    target.write_bytes(b"old")
    os.symlink(target, link)
    with files.atomic_write(str(link)) as f:
        f.write(b"new")
    assert os.path.islink(link) and target.read_bytes() == b"new"


# ------------------------------------------------------------- a second run of a script that writes one file

@pytest.mark.parametrize("script, argv, flag", [
    (train_tokenizer, ["--data", "corpus.txt", "--vocab-size", "300", "--out", "mine.json"], "--out"),
    (evaluate, ["--ckpt", "chat.pth", "--qa", "qa.jsonl", "--samples", "0", "--report", "mine.json"], "--report"),
    (make_qa, ["--out", "mine.json"], "--out"),
    (convert, ["from-hf", "export", "mine.json"], "CKPT"),
    (plots, ["a=run.csv", "--out", "mine.json"], "--out"),
])
def test_an_existing_file_is_replaced_only_with_overwrite(home, capsys, gpt2_like_export, script, argv, flag):
    (home / "run.csv").write_text(METRICS)
    (home / "mine.json").write_text("my own notes\n")
    before = snapshot(home)
    refused(capsys, script, *argv, fragment="--overwrite")
    assert snapshot(home) == before
    run_main(script.main, [*argv, "--overwrite"])
    assert (home / "mine.json").read_bytes() != b"my own notes\n"


def test_make_qa_leaves_an_up_to_date_file_alone(home):
    inode = os.stat(home / "qa.jsonl").st_ino
    assert run_main(make_qa.main, ["--out", "qa.jsonl"]) == 0
    assert os.stat(home / "qa.jsonl").st_ino == inode


@pytest.mark.parametrize("script, argv", [
    (train_tokenizer, ["--data", "corpus.txt", "--vocab-size", "300", "--out", "mine.json"]),
    (evaluate, ["--ckpt", "chat.pth", "--qa", "qa.jsonl", "--samples", "0", "--report", "mine.json"]),
    (make_qa, ["--out", "mine.json"]),
    (convert, ["from-hf", "export", "mine.json"]),
    (plots, ["a=run.csv", "--out", "mine.json"]),
    (train, ["--data", "corpus.txt", *TINY, "--max-iters", "1", "--metrics", "", "--ckpt", "mine.json"]),
])
def test_the_temporary_file_a_killed_run_left_is_cleared_by_the_next(home, gpt2_like_export, script, argv):
    (home / "run.csv").write_text(METRICS)
    (home / ".mine.json.k1ll3d.tmp").write_bytes(b"half a file")  # what atomic_write leaves after kill -9
    run_main(script.main, argv)
    assert (home / "mine.json").exists() and not (home / ".mine.json.k1ll3d.tmp").exists()
    assert not [n for n in os.listdir(home) if n.endswith((".tmp", ".lock"))]


def test_plots_never_writes_over_the_metrics_it_reads(home, capsys):
    (home / "run.csv").write_text(METRICS)
    os.link(home / "run.csv", home / "hard-run.csv")
    os.symlink(home / "run.csv", home / "soft-run.csv")
    before = snapshot(home)
    for out in ("run.csv", "hard-run.csv", "soft-run.csv"):
        refused(capsys, plots, "a=run.csv", "--out", out, "--overwrite", fragment="input")
    assert snapshot(home) == before

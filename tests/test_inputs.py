"""Every file a script reads, given as something that is not a readable file: each is named for what it is.

A pipe or a device would be read forever (a hang); a folder, a broken link or
a link loop is not "not found". Each case is one line and status 2, before
any work, and changes nothing.
"""
import os

import pytest

import convert
import evaluate
import generate
import interactive_generate
import make_qa
import nanogpt_benchmark
import plots
import serve
import serve_benchmark
import sft
import train
import train_tokenizer
from conftest import TINY
from errors import run_main
from test_outputs import snapshot

# Every flag that names a file a script reads, with the rest of a command that would otherwise run.
INPUTS = {
    "train --data": (train, ["--ckpt", "new.pth", *TINY, "--max-iters", "1", "--data"]),
    "train --tokenizer": (train, ["--ckpt", "new.pth", *TINY, "--max-iters", "1", "--data", "corpus.txt",
                                  "--tokenizer"]),
    "train --init-from": (train, ["--ckpt", "new.pth", "--max-iters", "1", "--data", "corpus.txt", "--init-from"]),
    "sft --init-from": (sft, ["--ckpt", "new.pth", "--qa", "qa.jsonl", "--data", "corpus.txt", "--max-iters", "1",
                              "--init-from"]),
    "sft --qa": (sft, ["--ckpt", "new.pth", "--init-from", "base.pth", "--data", "corpus.txt", "--max-iters", "1",
                       "--qa"]),
    "sft --data": (sft, ["--ckpt", "new.pth", "--init-from", "base.pth", "--qa", "qa.jsonl", "--max-iters", "1",
                         "--data"]),
    "generate --ckpt": (generate, ["--length", "5", "--ckpt"]),
    "interactive_generate --ckpt": (interactive_generate, ["--ckpt"]),
    "evaluate --ckpt": (evaluate, ["--report", "", "--samples", "0", "--ckpt"]),
    "evaluate --qa": (evaluate, ["--report", "", "--samples", "0", "--ckpt", "chat.pth", "--qa"]),
    "evaluate --data": (evaluate, ["--report", "", "--samples", "0", "--ckpt", "chat.pth", "--data"]),
    "train_tokenizer --data": (train_tokenizer, ["--vocab-size", "300", "--out", "tok.json", "--data"]),
    "make_qa --facts": (make_qa, ["--out", "new.jsonl", "--facts"]),
    "make_qa --corpus": (make_qa, ["--out", "new.jsonl", "--corpus"]),
    "make_qa --check": (make_qa, ["--check"]),
    "convert to-hf": (convert, ["to-hf", "--", "out"]),
    "serve --ckpt": (serve, ["--port", "0", "--ckpt"]),
    "serve_benchmark --ckpt": (serve_benchmark, ["--ckpt"]),
    "serve_benchmark --qa": (serve_benchmark, ["--ckpt", "chat.pth", "--qa"]),
    "plots": (plots, []),
    "nanogpt_benchmark --data": (nanogpt_benchmark, ["--nanogpt", "nanogpt", "--data"]),
    "nanogpt_benchmark --ours": (nanogpt_benchmark, ["--nanogpt", "nanogpt", "--ours-seconds", "10", "--ours"]),
}
# What each kind of path is called in the refusal.
NOT_FILES = {"": "is empty", "missing": "missing", "pipe": "not a regular file", "/dev/zero": "not a regular file",
             "link-to-null": "not a regular file", "dangling": "does not exist", "loop": "symbolic links",
             ".": "is a folder"}


@pytest.mark.parametrize("path", NOT_FILES)
@pytest.mark.parametrize("flag", INPUTS)
def test_an_input_that_is_no_readable_file_is_named_for_what_it_is(home, capsys, flag, path):
    script, argv = INPUTS[flag]
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):  # a stand-in
        os.makedirs(os.path.dirname(home / "nanogpt" / name), exist_ok=True)
        (home / "nanogpt" / name).write_text("")
    argv = [*argv, f"a={path}"] if script is plots else [*argv, path]
    if script is convert:  # the positional arguments: CKPT then OUT_DIR
        argv = ["to-hf", path, "out"]
    before = snapshot(home)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(script.main, argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert NOT_FILES[path] in err[0] and path.strip("./") in err[0], err[0]
    assert snapshot(home) == before


def test_from_hf_names_a_tokenizer_file_that_is_no_file_or_cuts_text_otherwise(home, capsys):
    import json
    convert.main(["to-hf", "base.pth", "export"])  # a character model
    spec = json.loads((home / "export" / "tokenizer.json").read_text())
    for pre_tokenizer in ({**spec["pre_tokenizer"], "pattern": {"Regex": r"\w+"}}, {"type": "Whitespace"}):
        (home / "export" / "tokenizer.json").write_text(json.dumps({**spec, "pre_tokenizer": pre_tokenizer}))
        refused_here(capsys, ["from-hf", "export", "new.pth"], "single characters")
    (home / "export" / "tokenizer.json").write_text(json.dumps(spec))
    os.remove(home / "export" / "tokenizer_config.json")
    os.mkfifo(home / "export" / "tokenizer_config.json")  # was skipped as absent; reading it would hang
    refused_here(capsys, ["from-hf", "export", "new.pth"], "not a regular file")
    assert not (home / "new.pth").exists()


def refused_here(capsys, argv, fragment):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(convert.main, argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and fragment in err[0], err

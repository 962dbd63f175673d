import os

import pytest
import torch

import checkpoint as ckpt_mod
from checkpoint import load_checkpoint, load_model, save_checkpoint
from errors import UserError


def test_round_trip_gives_the_same_logits(tiny_ckpt):
    model, tokenizer, ckpt = load_model(tiny_ckpt)
    again, _, _ = load_model(tiny_ckpt)
    idx = torch.tensor([tokenizer.encode("Sing, O goddess")])
    torch.testing.assert_close(model(idx)[0], again(idx)[0], rtol=0, atol=0)
    raw = torch.load(tiny_ckpt, weights_only=True)  # plain values only: loads with weights_only
    assert raw["format_version"] == ckpt_mod.FORMAT_VERSION
    assert {"model", "optimizer", "tokenizer", "train_args", "step", "rng", "history"} <= set(raw)
    assert raw["step"] == 30 and raw["model_type"] == "transformer"


class Payload:
    """Stands for any object whose unpickling could run code."""


def test_a_checkpoint_holding_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"format_version": 1, "model": Payload()}, path)
    with pytest.raises(UserError, match="not a readable b_lm checkpoint"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("content", [b"", b"hello, I am text", None])
def test_broken_files_are_user_errors(tmp_path, tiny_ckpt, content):
    path = tmp_path / "broken.pth"
    if content is None:  # a truncated checkpoint
        data = open(tiny_ckpt, "rb").read()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(UserError):
        load_checkpoint(str(path))
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a b_lm checkpoint"):
        load_checkpoint(str(tmp_path / "other.pth"))


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(str(path), {"step": 1})
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(path), {"step": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # no temporary file left behind

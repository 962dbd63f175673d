import math
import os

import pytest
import torch

import checkpoint as ckpt_mod
import generate
from checkpoint import load_checkpoint, load_model, save_checkpoint
from errors import UserError


def test_round_trip_gives_the_same_logits(tiny_ckpt):
    model, tokenizer, ckpt = load_model(tiny_ckpt)
    again, _, _ = load_model(tiny_ckpt)
    idx = torch.tensor([tokenizer.encode("Sing, O goddess")])
    torch.testing.assert_close(model(idx)[0], again(idx)[0], rtol=0, atol=0)
    raw = torch.load(tiny_ckpt, weights_only=True)  # plain values only: loads with weights_only
    assert raw["format_version"] == ckpt_mod.FORMAT_VERSION
    assert {"model", "optimizer", "tokenizer", "run_config", "step", "rng", "history"} <= set(raw)
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


# ------------------------------------------------------------------- what a loaded checkpoint must hold

def saved_with(tmp_path, tiny_ckpt, change_weights=None, **config):
    """A copy of the tiny checkpoint with its weights changed and its model_config fields set."""
    checkpoint = torch.load(tiny_ckpt, weights_only=True)
    if change_weights:
        change_weights(checkpoint["model"])
    checkpoint["model_config"].update(config)
    path = tmp_path / "changed.pth"
    torch.save(checkpoint, path)
    return path


def refused_by_generate(cli, path, *fragments):
    result = cli(generate, "--ckpt", path, "--start", "Sing", "--length", "3")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert result.stdout == ""


NOT_FLOATS = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
              torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("dtype", NOT_FLOATS, ids=str)
@pytest.mark.parametrize("name", ["wte.weight", "blocks.0.attn.qkv.weight", "ln_f.weight"])
def test_weights_that_are_not_floats_are_refused(tmp_path, tiny_ckpt, cli, dtype, name):
    def cast(weights):
        weights[name] = (weights[name] * 5).to(dtype)
    path = saved_with(tmp_path, tiny_ckpt, cast)
    kind = str(dtype).removeprefix("torch.")
    with pytest.raises(UserError, match=f"{name} is {kind}"):
        load_checkpoint(str(path))
    refused_by_generate(cli, path, name, kind)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_half_and_double_weights_load(tmp_path, tiny_ckpt, cli, dtype):
    def cast(weights):
        for name in weights:
            weights[name] = weights[name].to(dtype)
    path = saved_with(tmp_path, tiny_ckpt, cast)
    model, _, _ = load_model(str(path))
    assert next(model.parameters()).dtype == torch.float32
    assert cli(generate, "--ckpt", path, "--start", "Sing", "--length", "3").returncode == 0


SIZES = [-1, 0, 1.5, 2.0, 10 ** 12, "2", True, None, [2], {"n": 2}]


def config_cases():
    """(field, bad value) for every field of the Transformer's config."""
    cases = [(field, v) for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd") for v in SIZES]
    cases += [("n_head", v) for v in (3, 5, 32)]  # none divides n_embd 16
    cases += [("n_layer", 100_000)]  # small weights, yet minutes just to build
    cases += [("rope_theta", v) for v in (0.5, 1)]  # rotary frequencies that grow instead of falling
    cases += [("dropout", v) for v in ("x", -0.1, 1.0, 2, True, None, [0.0], math.nan)]
    cases += [(field, v) for field in ("bias", "tie_embeddings") for v in ("yes", 1, 0, None, [])]
    cases += [(field, v) for field in ("attention", "gelu", "positions", "norm", "mlp")
              for v in ("nonsense", 1, None, ["x"], True)]
    cases += [("rope_theta", v) for v in ("x", -1, 0, -1e4, math.nan, math.inf, True, None, [1e4])]
    return cases


@pytest.mark.parametrize("field, value", config_cases(), ids=str)
def test_every_model_config_field_is_checked_by_type_and_range(tmp_path, tiny_ckpt, cli, field, value):
    path = saved_with(tmp_path, tiny_ckpt, **{field: value})
    with pytest.raises(UserError, match=field):
        load_model(str(path))
    refused_by_generate(cli, path, field)


def test_rotary_positions_need_an_even_head_size(tmp_path, tiny_ckpt, cli):
    # 16 heads in a width of 16 are one dimension each: rotary embeddings turn pairs
    refused_by_generate(cli, saved_with(tmp_path, tiny_ckpt, positions="rope", n_head=16), "n_head", "even")


@pytest.mark.parametrize("key, value, fragment", [("model_type", ["transformer"], "model_type"),
                                                  ("model_type", {"a": 1}, "model_type"),
                                                  ("v1.model_type", ["transformer"], "model_type"),
                                                  ("tokenizer.kind", ["char"], "kind"),
                                                  ("tokenizer.kind", None, "kind")])
def test_unhashable_names_in_a_checkpoint_are_refused(tmp_path, tiny_ckpt, cli, key, value, fragment):
    checkpoint = torch.load(tiny_ckpt, weights_only=True)
    if key == "tokenizer.kind":
        checkpoint["tokenizer"]["kind"] = value
    elif key == "v1.model_type":  # a format-1 file is upgraded first: the upgrade must not trip on it either
        checkpoint.update(format_version=1, train_args=checkpoint.pop("run_config"), model_type=value)
    else:
        checkpoint[key] = value
    torch.save(checkpoint, tmp_path / "changed.pth")
    with pytest.raises(UserError, match=fragment):
        load_checkpoint(str(tmp_path / "changed.pth"))
    refused_by_generate(cli, tmp_path / "changed.pth", fragment)

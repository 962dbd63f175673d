"""Format-1 checkpoints, written by the code of 2026-11-30 (and `old*` by the code before rotary positions,
whose configs and flags lack the later fields), still load, sample, resume and convert exactly as that code did.

fixtures/v1/expected.json holds what the code that wrote them printed and exported: a seeded sample, the final
line of a resumed run (to step 9, elapsed time left out) and the SHA-256 of each file of a to-hf export.
"""
import hashlib
import json
import os
import re
import shutil

import pytest
import torch

import convert
import generate
import sft
import train
from checkpoint import FORMAT_VERSION, load_checkpoint
from errors import UserError

V1 = os.path.join(os.path.dirname(__file__), "fixtures", "v1")
EXPECTED = json.load(open(os.path.join(V1, "expected.json")))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_v1_checkpoint_loads_as_format_2_with_complete_configs(name):
    raw = torch.load(os.path.join(V1, f"{name}.pth"), weights_only=True)
    assert raw["format_version"] == 1 and "train_args" in raw
    c = load_checkpoint(os.path.join(V1, f"{name}.pth"))
    assert c["format_version"] == FORMAT_VERSION == 2 and "train_args" not in c
    if c["model_type"] == "transformer":
        assert {"positions", "norm", "mlp", "rope_theta", "tie_embeddings"} <= set(c["model_config"])
    if name.startswith("old"):  # trained before these settings existed: what they were then
        assert c["run_config"]["positions"] == "learned" and c["run_config"]["muon_weight_decay"] == 0.0
        assert c["run_config"]["shuffle_words"] == 0.0 and c["run_config"]["question_loss"] == 0.0
    if name == "imported":
        assert set(c["run_config"]) == {"model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "bias",
                                        "data", "imported_from"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_v1_checkpoint_samples_as_before(cli, name):
    result = cli(generate, "--ckpt", os.path.join(V1, f"{name}.pth"), "--start", "The ", "--length", "40",
                 "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED[name]["sample"]


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "resumed" in EXPECTED[n]))
def test_a_v1_checkpoint_resumes_as_before(cli, tmp_path, name):
    ckpt, data, qa = tmp_path / "c.pth", os.path.join(V1, "tiny.txt"), os.path.join(V1, "qa.jsonl")
    shutil.copy(os.path.join(V1, f"{name}.pth"), ckpt)
    if "chat" in name:  # a chat run's data may not change on resume: say where its files are now
        raw = torch.load(ckpt, weights_only=True)
        raw["train_args"].update(data=data, qa=qa)
        torch.save(raw, ckpt)
        result = cli(sft, "--ckpt", ckpt, "--resume", "--max-iters", "9")
    else:
        result = cli(train, "--ckpt", ckpt, "--resume", "--max-iters", "9", "--data", data)
    assert result.returncode == 0, result.stderr
    final = re.sub(r" elapsed_s=\S+", "", result.stdout.strip().splitlines()[-1])
    assert final == EXPECTED[name]["resumed"]
    assert load_checkpoint(str(ckpt))["format_version"] == 2  # saved in today's format


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "to_hf" in EXPECTED[n]))
def test_a_v1_checkpoint_converts_as_before(cli, tmp_path, name):
    result = cli(convert, "to-hf", os.path.join(V1, f"{name}.pth"), tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    files = {f: hashlib.sha256((tmp_path / "hf" / f).read_bytes()).hexdigest()
             for f in sorted(os.listdir(tmp_path / "hf"))}
    assert files == EXPECTED[name]["to_hf"]


def test_a_format_2_file_without_its_run_config_is_refused(tmp_path):
    raw = torch.load(os.path.join(V1, "char.pth"), weights_only=True)
    raw["format_version"] = 2  # a format-1 layout that claims to be format 2
    torch.save(raw, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="is damaged: a format-2 checkpoint without its run_config"):
        load_checkpoint(str(tmp_path / "odd.pth"))

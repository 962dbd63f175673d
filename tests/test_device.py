"""Choosing the device, with a stand-in torch_directml; and DirectML readiness of training.

No test here needs a GPU: CUDA and MPS are switched off with monkeypatch, and
DirectML is played by a fake torch_directml module put into sys.modules.
"""
import sys
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import benchmark
import device
from checkpoint import load_checkpoint, model_from_checkpoint
from device import attention_for, choose_device, is_directml
from conftest import TINY
from errors import UserError, run_main
from optimizers import build_optimizer
from sampling import KVCache
from transformer import GPTConfig, Transformer

DML = torch.device("privateuseone", 0)  # what torch_directml.device() returns on Windows


def stand_in_torch_directml(available=True):
    """A fake torch_directml with the two functions device.py uses."""
    module = types.ModuleType("torch_directml")
    module.is_available = lambda: available
    module.device = lambda index=0: torch.device("privateuseone", index)
    return module


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def without_directml(monkeypatch):
    # A None entry in sys.modules makes `import torch_directml` raise ImportError,
    # whether or not the real package is installed.
    monkeypatch.setitem(sys.modules, "torch_directml", None)


@pytest.fixture
def with_directml(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_directml", stand_in_torch_directml())


# ---------------------------------------------------------- choose_device

def test_dml_without_torch_directml_says_how_to_install_it(without_directml):
    with pytest.raises(UserError, match="pip install torch-directml"):
        choose_device("dml")


def test_dml_from_the_cli_is_one_line_on_stderr(without_directml, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(benchmark.main, ["--device", "dml", "--steps", "1"])
    assert e.value.code == 2
    assert "pip install torch-directml" in capsys.readouterr().err


def test_dml_with_torch_directml_but_no_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_directml", stand_in_torch_directml(available=False))
    with pytest.raises(UserError, match="no DirectML device"):
        choose_device("dml")


def test_dml_uses_torch_directml(with_directml):
    assert choose_device("dml") == DML


def test_auto_moves_on_to_cpu_without_torch_directml(no_gpu, without_directml):
    assert choose_device("auto") == torch.device("cpu")


def test_auto_picks_directml_when_there_is_no_cuda_or_mps(no_gpu, with_directml):
    assert choose_device("auto") == DML


def test_auto_prefers_cuda_to_directml(no_gpu, with_directml, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_missing_gpu_is_an_error_not_a_fallback(no_gpu, name):
    with pytest.raises(UserError, match=f"--device {name}"):
        choose_device(name)


def test_cpu_always_works(no_gpu, without_directml):
    assert choose_device("cpu") == torch.device("cpu")


def test_unknown_device_name():
    with pytest.raises(UserError, match="choose one of"):
        choose_device("quantum")


@pytest.mark.parametrize("device, requested, expected", [
    ("cpu", "auto", "sdpa"), ("cpu", "explicit", "explicit"), ("cpu", "sdpa", "sdpa"),
    (DML, "auto", "explicit"), (DML, "sdpa", "explicit"),  # DirectML has no SDPA kernel
])
def test_attention_for_the_device(device, requested, expected):
    assert attention_for(device, requested) == expected


def test_a_checkpoint_loaded_for_directml_gets_explicit_attention(tiny_ckpt, monkeypatch):
    # The model cannot really move to a stand-in device, so the CPU plays DirectML here.
    monkeypatch.setattr(device, "is_directml", lambda d: True)
    checkpoint = load_checkpoint(tiny_ckpt)
    assert checkpoint["model_config"]["attention"] == "sdpa"
    model, _ = model_from_checkpoint(checkpoint, "cpu")
    assert all(block.attn.attention == "explicit" for block in model.blocks)


def test_is_directml_recognises_privateuseone():
    assert is_directml(DML) and is_directml("privateuseone") and is_directml("privateuseone:1")
    assert not is_directml("cpu") and not is_directml(torch.device("cuda", 0))


# ----------------------------------------------------- DirectML readiness
# torch-directml has no kernels for torch.optim's fast paths (the _foreach_*
# ops, fused optimizer kernels, lerp) nor for scaled_dot_product_attention:
# they fall back to the CPU, copying tensors back and forth every step
# (microsoft/DirectML issues 604 and 675). So we record every ATen op one
# training step dispatches, on the CPU, and look for them by name.
DIRECTML_LACKS = ("_foreach_", "_fused_", "lerp", "scaled_dot_product")


class OpRecorder(TorchDispatchMode):
    """Collects the name of every ATen op ('mm', 'addcmul_', ...) run while it is active.

    It sits below autograd, so it also sees the backward pass's ops.
    """

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def tiny_model(attention, **parts):
    torch.manual_seed(0)
    return Transformer(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                 attention=attention, **parts))


def ops_of_training(model, optimizer, steps=2):
    """ATen ops of `steps` full training steps (the first creates the optimizer's state)."""
    x = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(0))
    with OpRecorder() as recorder:
        for _ in range(steps):
            _, loss = model(x, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return recorder.ops


def lacking(ops):
    return sorted(op for op in ops if any(name in op for name in DIRECTML_LACKS))


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "muon"])
def test_training_with_explicit_attention_uses_only_ops_directml_has(name):
    model = tiny_model("explicit")
    ops = ops_of_training(model, build_optimizer(model, name, lr=1e-3, weight_decay=0.1))
    assert "mm" in ops and "native_layer_norm_backward" in ops  # forward and backward were seen
    assert lacking(ops) == []


def test_the_rotary_block_with_qk_norm_uses_only_ops_directml_has():
    model = tiny_model("explicit", positions="rope", mlp="swiglu", qk_norm=True)
    ops = ops_of_training(model, build_optimizer(model, "muon", lr=1e-3, weight_decay=0.1))
    assert {"native_layer_norm_backward", "addcmul", "silu"} <= ops and lacking(ops) == []


def test_cached_generation_with_explicit_attention_uses_only_ops_directml_has():
    model = tiny_model("explicit").eval()
    cache = KVCache(len(model.blocks), model.config.block_size)
    with OpRecorder() as recorder, torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)  # prefill
        model(torch.tensor([[4]]), kv_cache=cache)  # one decoding step
    assert lacking(recorder.ops) == []


def test_a_whole_default_training_run_uses_only_ops_directml_has(tmp_path, small_corpus):
    # Everything the loop runs: forward, backward, clipping, the scaler, the schedule, Muon, evaluation, saving.
    import train
    with OpRecorder() as recorder:
        train.main(["--data", small_corpus, "--ckpt", str(tmp_path / "run.pth"), *TINY, "--attention", "explicit",
                    "--max-iters", "3", "--eval-interval", "2"])
    assert {"mm", "linalg_vector_norm", "native_layer_norm_backward"} <= recorder.ops  # clipping was seen
    assert lacking(recorder.ops) == []


# The recorder must be able to see what the tests above say is absent.
@pytest.mark.parametrize("attention, make_optimizer, expected", [
    ("sdpa", lambda m: build_optimizer(m, "adamw", lr=1e-3, weight_decay=0.1), "scaled_dot_product"),
    ("explicit", lambda m: torch.optim.AdamW(m.parameters(), foreach=False), "lerp"),
    ("explicit", lambda m: torch.optim.AdamW(m.parameters(), foreach=True), "_foreach_"),
    ("explicit", lambda m: torch.optim.AdamW(m.parameters(), fused=True), "_fused_"),
], ids=["sdpa", "lerp", "foreach", "fused"])
def test_the_recorder_catches_what_directml_lacks(attention, make_optimizer, expected):
    model = tiny_model(attention)
    assert any(expected in op for op in lacking(ops_of_training(model, make_optimizer(model))))


def test_the_recorder_catches_the_foreach_kernels_of_torchs_default_clipping():
    model = tiny_model("explicit")
    x = torch.randint(11, (2, 8))
    model(x, x)[1].backward()
    with OpRecorder() as recorder:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # what the loop must not call
    assert "_foreach_norm" in lacking(recorder.ops)

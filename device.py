"""Choosing the device to run on (CUDA/ROCm, Apple MPS, DirectML or the CPU), and how to run fast there."""
import contextlib
import importlib
import os

import torch

from errors import UserError, short_reason

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps", "dml")


def _missing(name):
    """Why this machine cannot run on the device `name` ('cuda', 'mps' or 'dml'), or None when it can."""
    if name == "cuda":
        return None if torch.cuda.is_available() else "no CUDA/ROCm GPU is available to this PyTorch build"
    if name == "mps":
        return None if torch.backends.mps.is_available() else "Apple MPS is not available on this machine"
    try:
        import torch_directml
    except ImportError:
        return "torch_directml is not installed; install it with 'pip install torch-directml' (Windows, AMD/Intel GPUs)"
    return None if torch_directml.is_available() else "torch_directml found no DirectML device"


def choose_device(name="auto"):
    """The torch.device for a --device value: 'auto' tries cuda (ROCm's name too), mps, dml, then cpu; a device this
    machine lacks is a UserError, not a silent fallback."""
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        name = next((n for n in ("cuda", "mps", "dml") if _missing(n) is None), "cpu")
    if name != "cpu" and (reason := _missing(name)):
        raise UserError(f"--device {name}: {reason}")
    return importlib.import_module("torch_directml").device() if name == "dml" else torch.device(name)


def is_directml(device):
    """DirectML devices show up as 'privateuseone' in PyTorch."""
    return torch.device(device).type == "privateuseone"


def attention_for(device, requested="auto"):
    """'explicit' attention (plain matmuls) on DirectML, which has no scaled_dot_product_attention kernel (PyTorch would
    copy q, k and v to the CPU and back in every layer); elsewhere 'auto' means 'sdpa', the fused kernels."""
    return "explicit" if is_directml(device) else "sdpa" if requested == "auto" else requested


def flush_denormals():
    """Compute with denormal floats (below 1.2e-38) as zeros on the CPU: x86 CPUs handle them in slow microcode, and
    an SGD run here that drifted into them late in training slowed from 0.13 to 0.66 s per step."""
    torch.set_flush_denormal(True)  # a no-op where the CPU lacks the mode


def device_name(device):
    """What a device is, for reports and caches: a GPU's model name, else the device type."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def lay_out_for_decoding(model):
    """Store each tall weight matrix (more outputs than inputs: attention's qkv, the MLP's first layer, the output
    head) transposed in memory, on the CPU. The model computes the same function, but a decoding step multiplies one
    vector by every matrix, and x86 CPUs read a (out, in) matrix with short rows at half the speed of the same
    numbers stored (in, out): measured 1.2x to 2.1x for GPT-2's shapes, while a wide matrix (out < in) reads fastest
    as it is (RESULTS.md, 2026-12-01). No copy is kept: the parameter becomes a transposed view of its new storage.
    For inference only: training and exporting expect the usual layout."""
    if next(model.parameters()).device.type != "cpu":
        return model  # GPUs read both layouts alike
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features > module.in_features:
                module.weight.data = module.weight.data.t().contiguous().t()
    return model


def synchronize(device):
    """Wait until the device has finished the work queued so far (GPUs run asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif is_directml(device):
        torch.zeros(1, device=device).cpu()  # DirectML has no synchronize: a read waits for its in-order queue


DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(device, name="auto"):
    """The dtype to autocast matmuls to, or None for float32. auto: bfloat16 on CUDA GPUs that have it, else float16
    (with a GradScaler); float32 off CUDA, where most CPUs run bfloat16 matmuls far slower and MPS/DirectML vary."""
    device = torch.device(device)
    if name == "float16" and device.type == "cpu":
        raise UserError("--dtype float16 needs a GPU; on the CPU use float32 (fastest) or bfloat16")
    if name == "auto" and device.type == "cuda":
        name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)  # None: float32


def autocast(device, dtype):
    """A context that runs the forward pass in `dtype` (no-op for None)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def maybe_compile(model, example_input):
    """torch.compile the model where that works; say why not where it doesn't. Compilation is lazy, so the first call
    is made here with an example batch, and a failure falls back to the eager model at once."""
    device = example_input.device
    if device.type == "mps" or is_directml(device):
        print(f"note: --compile is not supported on {device.type}; running eagerly")
        return model
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(example_input)
        return compiled
    except Exception as e:  # a missing compiler, an unsupported platform, ...
        print(f"note: torch.compile failed ({short_reason(e)}); running eagerly")
        return model


def check_fits_in_memory(n_parameters, device, extra_bytes=0, what="the model"):
    """UserError if training that many parameters (and extra_bytes more) surely cannot fit in the device's memory:
    training holds each float32 parameter four times (weights, gradients and Adam's two moments), 16 bytes, and
    refusing now beats an allocation that fails (or swaps the machine to a halt) after minutes of start-up."""
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to check against
            return
    if (need := 16 * n_parameters + extra_bytes) > total:
        training = f" to train ({n_parameters / 1e6:,.1f}M parameters)" if n_parameters else ""
        raise UserError(f"{what} would need about {need / 2**30:,.1f} GiB{training}, more than the "
                        f"{total / 2**30:,.1f} GiB this {device.type} has: make it smaller")

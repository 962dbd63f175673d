"""Choosing the device to run on: CUDA/ROCm, Apple MPS, DirectML or the CPU."""
import torch

from errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps", "dml")
DML_INSTALL_HINT = "install it with 'pip install torch-directml' (Windows, AMD/Intel GPUs)"


def _directml():
    """The torch_directml module, or None where it is not installed."""
    try:
        import torch_directml
    except ImportError:
        return None
    return torch_directml


def _mps_available():
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def choose_device(name="auto"):
    """Return the torch.device for a --device value.

    'auto' tries cuda (which is also ROCm's name), then mps, then dml, then cpu.
    Asking for a device this machine lacks is a UserError, not a silent fallback.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        dml = _directml()
        if dml is not None and dml.is_available():
            return dml.device()
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA/ROCm GPU is available to this PyTorch build")
        return torch.device("cuda")
    if name == "mps":
        if not _mps_available():
            raise UserError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "dml":
        dml = _directml()
        if dml is None:
            raise UserError(f"--device dml: torch_directml is not installed; {DML_INSTALL_HINT}")
        if not dml.is_available():
            raise UserError("--device dml: torch_directml found no DirectML device")
        return dml.device()
    raise UserError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")


def is_directml(device):
    """DirectML devices show up as 'privateuseone' in PyTorch."""
    return torch.device(device).type == "privateuseone"


def synchronize(device):
    """Wait until the device has finished the work queued so far.

    GPUs run asynchronously: without this a clock would measure how long it
    took to queue the kernels, not to run them.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif is_directml(device):
        # DirectML has no synchronize; reading a value back to the host waits
        # for its in-order queue to drain.
        torch.zeros(1, device=device).cpu()

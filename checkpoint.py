"""Checkpoint files: written atomically, loaded without running any code.

A checkpoint is a dict of tensors and plain Python values (dict, list, str,
int, float, bool, None), so `torch.load(..., weights_only=True)` can read it
and a malicious file cannot execute anything. Its keys:

    format_version  int, FORMAT_VERSION
    model_type      'transformer' or 'rnn'
    model_config    the config dataclass as a dict
    model           the model's state_dict
    optimizer       the optimizer's state_dict (None in exported models)
    tokenizer       the tokenizer's to_dict()
    train_args      the training flags, as a dict
    step            optimizer steps taken
    best_val_loss   lowest validation loss seen (float or None)
    rng             {'torch': ByteTensor, 'batches': ByteTensor} generator states
    history         list of metric rows (dicts), one per evaluation
    chat            True for instruction-tuned chat models
"""
import os

import torch

from device import attention_for
from errors import UserError
from files import atomic_write
from tokenizer import tokenizer_from_dict
from transformer import build_model

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_type", "model_config", "model", "tokenizer")


def save_checkpoint(path, checkpoint):
    """Write the checkpoint atomically: `path` holds the old file or the new, never half of one."""
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint, turning every way a file can be wrong into a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found: train one with 'python train.py'")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage in a file can fail the unpickler in many ways
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable b_lm checkpoint (truncated or another format): {reason[:120]}")
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise UserError(f"{path} is not a b_lm checkpoint (it lacks the model, tokenizer or format version)")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {checkpoint['format_version']}; "
                        f"this version of b_lm reads format {FORMAT_VERSION}")
    return checkpoint


def model_from_checkpoint(checkpoint, device="cpu"):
    """Rebuild (model, tokenizer) from a loaded checkpoint, in eval mode, for `device`."""
    config = dict(checkpoint["model_config"])
    if checkpoint["model_type"] == "transformer":
        # Both attention kinds compute the same function: pick the one the device runs natively.
        config["attention"] = attention_for(device, config.get("attention", "auto"))
    model = build_model(checkpoint["model_type"], config)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return model, tokenizer_from_dict(checkpoint["tokenizer"])


def training_data(checkpoint, override=None):
    """The text file to use with a checkpoint: override if given, else the one it was trained on.

    train_args['data'] is the path as it was given to train.py, which may be
    relative to another folder or gone by now; then the user must say.
    """
    path = override or (checkpoint.get("train_args") or {}).get("data") or "data.txt"
    if not os.path.isfile(path):
        hint = "" if override else " (the file the checkpoint was trained on); name the corpus with --data"
        raise UserError(f"data file {path} not found{hint}")
    return path


def load_model(path, device="cpu"):
    """Load a checkpoint file for inference: (model, tokenizer, checkpoint)."""
    checkpoint = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(checkpoint, device)
    return model, tokenizer, checkpoint

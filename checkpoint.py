"""Checkpoint files: the one place that builds, writes, reads and checks them.

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
    elapsed_s       seconds of training so far, over all resumed runs
    rng             {'torch': ByteTensor, 'batches': ByteTensor} generator states
    history         list of metric rows (dicts), as in the metrics CSV
    chat            True for instruction-tuned chat models
"""
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from device import attention_for
from errors import UserError
from files import atomic_write, check_input_file
from tokenizer_io import tokenizer_from_dict
from transformer import MAX_LAYERS, MODELS, build_model, estimate_parameters, model_type_of, rope_table_floats

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_type", "model_config", "model", "tokenizer")
# The weights a model can hold: float32 (what b_lm trains), and the half and double precisions it converts
# from. Integer, boolean and complex tensors are not weights of ours, and float8 needs scales we don't have.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# No size of a model (layers, heads, width, context, vocabulary) reaches this; a config that says so is damaged.
MAX_SIZE = 2 ** 24
SIZE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
FLAG_FIELDS = ("bias", "tie_embeddings")
NAME_FIELDS = ("attention", "gelu", "positions", "norm", "mlp", "cell")  # which names are known, the model says


@dataclass
class Progress:
    """Where a training run stands: what a checkpoint must hold to continue it exactly."""
    step: int = 0
    best_val_loss: Optional[float] = None
    elapsed_s: float = 0.0
    history: list = field(default_factory=list)
    rng: Optional[dict] = None  # {'torch': ..., 'batches': ...} generator states


def build_checkpoint(model, tokenizer, optimizer=None, progress=None, train_args=None, chat=False):
    """The checkpoint dict of a model (and, while training, of its run)."""
    return checkpoint_dict(model_type_of(model), asdict(model.config), model.state_dict(), tokenizer,
                           optimizer.state_dict() if optimizer is not None else None, progress, train_args, chat)


def checkpoint_dict(model_type, model_config, weights, tokenizer, optimizer_state=None, progress=None,
                    train_args=None, chat=False):
    """The checkpoint dict, from its parts: the one place that lays it out (build_checkpoint's model is one way in)."""
    return {"format_version": FORMAT_VERSION, "model_type": model_type, "model_config": dict(model_config),
            "model": weights, "optimizer": optimizer_state, "tokenizer": tokenizer.to_dict(),
            "train_args": dict(train_args or {}), "chat": bool(chat), **asdict(progress or Progress())}


def save_checkpoint(path, checkpoint):
    """Write the checkpoint atomically: `path` holds the old file or the new, never half of one."""
    try:
        with atomic_write(path) as f:
            torch.save(checkpoint, f)
    except OSError as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint, turning every way a file can be wrong into a UserError."""
    if path and not os.path.lexists(path):
        raise UserError(f"checkpoint {path} not found: train one with 'python train.py'")
    check_input_file(path, "checkpoint")
    try:
        checkpoint = read_pickled(path, map_location)
    except ValueError as e:
        raise UserError(f"{path} is not a readable b_lm checkpoint (truncated or another format): {e}") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise UserError(f"{path} is not a b_lm checkpoint (it lacks the model, tokenizer or format version)")
    version = checkpoint["format_version"]
    if type(version) is not int:
        raise UserError(f"{path}: format_version must be an integer, not {version!r}")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {version}; this version of b_lm reads format "
                        f"{FORMAT_VERSION} only")
    problem = content_problem(checkpoint)
    if problem:
        raise UserError(f"{path} is damaged: {problem}")
    return checkpoint


def read_pickled(path, map_location="cpu"):
    """torch.load with weights_only, so the file can run no code; ValueError with a short one-line reason if
    the unpickler refuses it (PyTorch's own text is a page of advice, some of it to load the file unsafely)."""
    try:
        with warnings.catch_warnings():  # torch's warnings about odd files would precede our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage in a file can fail the unpickler in many ways
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            reason = f"it holds a Python object ({found.group(1)}), not only tensors and plain values"
        elif text.startswith("Weights only load failed"):
            reason = "it holds Python objects, not only tensors and plain values"
        else:
            reason = text.splitlines()[0][:120] if text else type(e).__name__
        raise ValueError(reason) from None


def content_problem(c):
    """What is wrong inside a checkpoint whose keys are all there, or None."""
    if not isinstance(c["model_type"], str) or c["model_type"] not in MODELS:
        return f"unknown model_type {_short(c['model_type'])}"
    if not isinstance(c["model_config"], dict) or not isinstance(c["tokenizer"], dict):
        return "model_config and tokenizer must be dicts"
    if not isinstance(c["tokenizer"].get("kind"), str):
        return f"the tokenizer's kind must be a name, not {_short(c['tokenizer'].get('kind'))}"
    if not isinstance(c["model"], dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                   for k, t in c["model"].items()):
        return "its model weights are not a dict of tensors"
    problem = dtype_problem(c["model"])
    if problem:
        return problem
    train_args = c.get("train_args", {}) or {}
    if not isinstance(train_args, dict):
        return "train_args must be a dict"
    return train_args_problem(train_args)


def train_args_problem(train_args):
    """What is wrong with the recorded flags that loading a checkpoint reads (its corpus and split), or None."""
    data, fraction = train_args.get("data"), train_args.get("val_fraction", 0.1)
    if data is not None and type(data) is not str:
        return f"its training data must be a path, not {_short(data)}"
    if type(fraction) not in (int, float) or not 0 < fraction < 1:
        return f"its val_fraction must be a number in (0, 1), not {_short(fraction)}"
    return None


def dtype_problem(weights):
    """What is wrong with the types of a {name: tensor} of weights, or None: each must be a float of WEIGHT_DTYPES."""
    wrong = [name for name, t in weights.items() if t.dtype not in WEIGHT_DTYPES]
    if not wrong:
        return None
    kinds = ", ".join(str(t).removeprefix("torch.") for t in WEIGHT_DTYPES)
    return (f"weight {wrong[0]} is {str(weights[wrong[0]].dtype).removeprefix('torch.')}"
            f"{f' (and {len(wrong) - 1} more are not floats)' if len(wrong) > 1 else ''}: model weights are "
            f"floating-point numbers ({kinds}); quantized or integer weights do not load")


def config_problem(model_type, config):
    """What is wrong with the fields of a model config (a dict) by type and range, or None.

    Checked before anything is built: a model's constructor trusts its config,
    and 1.5 layers, True heads or 3 heads in a width of 16 fail there as
    tracebacks. A field left out takes its default.
    """
    for name in SIZE_FIELDS:
        value, most = config.get(name, 1), MAX_LAYERS if name == "n_layer" else MAX_SIZE
        if type(value) is not int or not 1 <= value <= most:
            return f"{name} must be a whole number from 1 to {most:,}, not {_short(value)}"
    for name in FLAG_FIELDS:
        if type(config.get(name, False)) is not bool:
            return f"{name} must be true or false, not {_short(config[name])}"
    dropout = config.get("dropout", 0.0)
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        return f"dropout must be a number from 0 to below 1, not {_short(dropout)}"
    for name in NAME_FIELDS:
        if type(config.get(name, "")) is not str:
            return f"{name} must be a name (a string), not {_short(config[name])}"
    if model_type != "transformer":
        return None
    theta = config.get("rope_theta", 10000.0)
    # Below 1 the rotary frequencies grow with the dimension instead of falling: the angles overflow.
    if type(theta) not in (int, float) or not 1 < theta < math.inf:
        return f"rope_theta must be a number above 1, not {_short(theta)}"
    n_head, n_embd = config.get("n_head", 4), config.get("n_embd", 128)
    if n_embd % n_head:
        return f"n_head {n_head} does not divide n_embd {n_embd}"
    if config.get("positions") == "rope" and n_embd // n_head % 2:
        return f"positions 'rope' needs an even head size (n_embd / n_head), not {n_embd // n_head}"
    return None


def _short(value):
    """A value as a message shows it: its repr, cut short (a pickle can hold a list nested past what repr reaches)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= 60 else text[:60] + "..."


def progress_of(checkpoint, path):
    """The Progress a checkpoint holds, checked, to resume from; UserError if it cannot resume."""
    if checkpoint.get("optimizer") is None:
        raise UserError(f"{path} holds no optimizer state, so it cannot be resumed")
    rng = checkpoint.get("rng")
    p = Progress(checkpoint.get("step"), checkpoint.get("best_val_loss"), checkpoint.get("elapsed_s", 0.0),
                 checkpoint.get("history", []), rng)
    fine = (type(p.step) is int and p.step >= 0
            and (p.best_val_loss is None or isinstance(p.best_val_loss, float))
            and isinstance(p.elapsed_s, (int, float)) and math.isfinite(p.elapsed_s)
            and isinstance(p.history, list) and all(isinstance(row, dict) for row in p.history)
            and isinstance(rng, dict)
            and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("torch", "batches")))
    if not fine:
        raise UserError(f"{path} cannot be resumed: its step, history or random-generator states are damaged")
    return p


def check_model(checkpoint, path="the checkpoint"):
    """The tokenizer of a checkpoint whose weights are finite and fit its config and tokenizer; UserError if not.

    The model is built on the meta device, which holds shapes and no memory:
    a damaged config could otherwise ask for terabytes before anything fails.
    """
    problem = content_problem(checkpoint) or config_problem(checkpoint["model_type"], checkpoint["model_config"])
    if problem:
        raise UserError(f"{path}: {problem}")
    try:
        present = sum(t.numel() for t in checkpoint["model"].values())
        if estimate_parameters(checkpoint["model_type"], checkpoint["model_config"]) > 2 * present + 10 ** 6:
            raise ValueError(f"the config makes a far larger model than the {present:,} weights present")
        if rope_table_floats(checkpoint["model_type"], checkpoint["model_config"]) > 2 * present + 10 ** 7:
            raise ValueError(f"the config's context makes rotary tables far larger than the {present:,} weights")
        with torch.device("meta"):
            skeleton = build_model(checkpoint["model_type"], checkpoint["model_config"])
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in checkpoint["model"].items()}
        if expected != found:
            name = sorted(set(expected) ^ set(found)) or [k for k in expected if expected[k] != found[k]]
            raise ValueError(f"{name[0]} is {found.get(name[0], 'missing')}, the config makes it "
                             f"{expected.get(name[0], 'absent')}")
    except (TypeError, ValueError, RuntimeError, UserError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: its weights do not fit the model its config describes ({reason})") from None
    # A sum is NaN or infinite when any weight is (or when the weights are absurdly large), and unlike
    # isfinite(t) it needs no temporary the size of the tensor: loading stays within the model's memory.
    if not all(torch.isfinite(t.sum()) for t in checkpoint["model"].values()):
        raise UserError(f"{path}: its model weights hold NaN, infinite or absurdly large values")
    try:
        tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if tokenizer.vocab_size != skeleton.config.vocab_size:
        raise UserError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but the model "
                        f"{skeleton.config.vocab_size}")
    return tokenizer


def model_from_checkpoint(checkpoint, device="cpu", path="the checkpoint"):
    """Rebuild (model, tokenizer) from a loaded checkpoint, in eval mode, for `device`."""
    tokenizer = check_model(checkpoint, path)
    config = dict(checkpoint["model_config"])
    if checkpoint["model_type"] == "transformer":
        # Both attention kinds compute the same function: pick the one the device runs natively.
        config["attention"] = attention_for(device, config.get("attention", "auto"))
    model = build_model(checkpoint["model_type"], config)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), tokenizer


def training_data(checkpoint, override=None):
    """The text file to use with a checkpoint: override if given, else the one it was trained on.

    train_args['data'] is the path as it was given to train.py, which may be
    relative to another folder or gone by now; then the user must say.
    """
    path = override or (checkpoint.get("train_args") or {}).get("data") or "data.txt"
    if not os.path.lexists(path) and not override:
        raise UserError(f"data file {path} not found (the file the checkpoint was trained on); name the corpus "
                        f"with --data")
    check_input_file(path, "data file")
    return path


def load_model(path, device="cpu"):
    """Load a checkpoint file for inference: (model, tokenizer, checkpoint)."""
    checkpoint = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(checkpoint, device, path)
    return model, tokenizer, checkpoint

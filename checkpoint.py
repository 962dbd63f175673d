"""Checkpoint files: the one place that builds, writes, reads and checks them.

A checkpoint is a dict of tensors and plain Python values (dict, list, str, int, float, bool, None), so
`torch.load(..., weights_only=True)` can read it and a malicious file cannot execute anything. Its keys:

    format_version  int, FORMAT_VERSION
    model_type      'transformer' or 'rnn'
    model_config    the model's config dataclass as a dict, every field
    model           the model's state_dict
    optimizer       the optimizer's state_dict (None in exported models)
    tokenizer       the tokenizer's to_dict()
    run_config      the settings of the run that made it (run_config.py and the script's own), as a dict
    chat            True for instruction-tuned chat models
    step, best_val_loss, elapsed_s, history, rng, weight_average: the fields of Progress (below), where the run
                    stands
"""
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from device import attention_for, lay_out_for_decoding
from errors import UserError, short_reason, shown
from files import atomic_write, check_input_file
from tokenizer_io import tokenizer_from_dict
from transformer import MODELS, build_model, config_defaults, config_problem, estimate_parameters, rope_table_floats

FORMAT_VERSION = 2
REQUIRED_KEYS = ("format_version", "model_type", "model_config", "model", "tokenizer")
# What a run was trained with when its saved settings lack one: the defaults before the setting existed (format 1
# saved fewer settings; average_last, question_loss and data_order came after format 2).
EARLIER_DEFAULTS = dict(positions="learned", norm="layer", mlp="gelu", muon_weight_decay=0.0, shuffle_words=0.0,
                        average_last=0.0, question_loss=0.0, data_order="random")
# Flags format 1 recorded that name an invocation rather than the run.
NOT_SETTINGS = ("resume", "overwrite", "given")
# The weights a model can hold: float32 (what b_lm trains), and the half and double precisions it converts
# from. Integer, boolean and complex tensors are not weights of ours, and float8 needs scales we don't have.
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class Progress:
    """Where a training run stands: what a checkpoint must hold to continue it exactly."""
    step: int = 0  # optimizer steps taken
    best_val_loss: Optional[float] = None  # lowest validation loss seen
    elapsed_s: float = 0.0  # seconds of training so far, over all resumed runs
    history: list = field(default_factory=list)  # metric rows (dicts), as in the metrics CSV
    # {'torch', 'batches'}: ByteTensor generator states; 'batch_order' (and sft.py's 'turn_order'): int64 tensors of
    # the blocks (questions) the pass has still to give, absent in checkpoints from before the passes
    rng: Optional[dict] = None
    weight_average: Optional[dict] = None  # {'steps': n, 'weights': {name: tensor}}: mean of the last n steps' weights


def checkpoint_dict(model_type, model_config, weights, tokenizer, optimizer_state=None, progress=None,
                    run_config=None, chat=False):
    """The checkpoint dict, from its parts (while training, of its run too): the one place that lays it out."""
    return {"format_version": FORMAT_VERSION, "model_type": model_type, "model_config": dict(model_config),
            "model": weights, "optimizer": optimizer_state, "tokenizer": tokenizer.to_dict(),
            "run_config": dict(run_config or {}), "chat": bool(chat), **asdict(progress or Progress())}


def upgrade_v1(checkpoint):
    """A format-1 checkpoint as format 2: its train_args as run_config, its model config given the fields added since
    (load_checkpoint gives the run config its own)."""
    c = dict(checkpoint)
    settings = c.pop("train_args", None) or {}
    if not isinstance(settings, dict):
        return {**c, "run_config": settings}  # content_problem says what is wrong
    c["run_config"] = {k: v for k, v in settings.items() if k not in NOT_SETTINGS}
    if isinstance(c["model_type"], str) and c["model_type"] in MODELS and isinstance(c["model_config"], dict):
        c["model_config"] = {**config_defaults(c["model_type"]), **c["model_config"]}
    c["format_version"] = 2
    return c


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
    if version == 1:
        checkpoint = upgrade_v1(checkpoint)
    elif version != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {version}; this version of b_lm reads format "
                        f"1 and {FORMAT_VERSION} only")
    elif "run_config" not in checkpoint:
        raise UserError(f"{path} is damaged: a format-{version} checkpoint without its run_config")
    if problem := content_problem(checkpoint):
        raise UserError(f"{path} is damaged: {problem}")
    return {**checkpoint, "run_config": with_earlier_defaults(checkpoint["run_config"])}


def with_earlier_defaults(run_config):
    """A trained run's settings, with EARLIER_DEFAULTS for those it predates; an imported model's (or none) as they
    are."""
    trained_here = bool(run_config) and "imported_from" not in run_config
    return {**(EARLIER_DEFAULTS if trained_here else {}), **run_config}


def read_pickled(path, map_location="cpu"):
    """torch.load with weights_only, so the file can run no code; ValueError with a short one-line reason if
    the unpickler refuses it (PyTorch's own text is a page of advice, some of it to load the file unsafely)."""
    try:
        with warnings.catch_warnings():  # torch's warnings about odd files would precede our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage in a file can fail the unpickler in many ways
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise ValueError(f"it holds a Python object ({found[1]}), not only tensors and plain values") from None
        if short_reason(e).startswith("Weights only load failed"):
            raise ValueError("it holds Python objects, not only tensors and plain values") from None
        raise ValueError(short_reason(e, 120)) from None


def content_problem(c):
    """What is wrong inside a checkpoint whose keys are all there, or None."""
    if not isinstance(c["model_type"], str) or c["model_type"] not in MODELS:
        return f"unknown model_type {shown(c['model_type'])}"
    if not isinstance(c["model_config"], dict) or not isinstance(c["tokenizer"], dict):
        return "model_config and tokenizer must be dicts"
    if not isinstance(c["tokenizer"].get("kind"), str):
        return f"the tokenizer's kind must be a name, not {shown(c['tokenizer'].get('kind'))}"
    if not isinstance(c["model"], dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                   for k, t in c["model"].items()):
        return "its model weights are not a dict of tensors"
    if problem := dtype_problem(c["model"]):
        return problem
    if not isinstance(c["run_config"], dict):
        return "run_config must be a dict"
    # The recorded settings that loading a checkpoint reads: its corpus and split.
    data, fraction = c["run_config"].get("data"), c["run_config"].get("val_fraction", 0.1)
    if data is not None and type(data) is not str:
        return f"its training data must be a path, not {shown(data)}"
    if type(fraction) not in (int, float) or not 0 < fraction < 1:
        return f"its val_fraction must be a number in (0, 1), not {shown(fraction)}"
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


def resumed_progress(checkpoint, path, optimizer, task):
    """The Progress a checkpoint holds, checked, with the optimizer, torch's random generator and the task's draws
    (tasks.py: restore_draws) back where they were; UserError if it cannot resume."""
    if checkpoint.get("optimizer") is None:
        raise UserError(f"{path} holds no optimizer state, so it cannot be resumed")
    rng = checkpoint.get("rng")
    p = Progress(checkpoint.get("step"), checkpoint.get("best_val_loss"), checkpoint.get("elapsed_s", 0.0),
                 checkpoint.get("history", []), rng, checkpoint.get("weight_average"))
    fine = (type(p.step) is int and p.step >= 0
            and (p.best_val_loss is None or isinstance(p.best_val_loss, float))
            and isinstance(p.elapsed_s, (int, float)) and math.isfinite(p.elapsed_s)
            and isinstance(p.history, list) and all(isinstance(row, dict) for row in p.history)
            and isinstance(rng, dict)
            and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8 for k in ("torch", "batches"))
            and (p.weight_average is None or isinstance(p.weight_average, dict)))
    if not fine:
        raise UserError(f"{path} cannot be resumed: its step, history, random-generator states or weight average "
                        f"are damaged")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(rng["torch"])
        task.restore_draws(rng)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path} cannot be resumed: its optimizer or generator state does not fit "
                        f"({short_reason(e, 120)})") from None
    return p


def checked_tokenizer(checkpoint, path="the checkpoint"):
    """The tokenizer of a checkpoint, once its weights are known to be finite and to fit its config and its
    tokenizer: the checks every checkpoint gets before it is used. UserError if they fail. The model is built on the
    meta device, which holds shapes and no memory: a damaged config could otherwise ask for terabytes at once."""
    if problem := content_problem(checkpoint) or config_problem(checkpoint["model_type"], checkpoint["model_config"]):
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
        raise UserError(f"{path}: its weights do not fit the model its config describes ({short_reason(e)})") from None
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
    tokenizer = checked_tokenizer(checkpoint, path)
    config = dict(checkpoint["model_config"])
    if checkpoint["model_type"] == "transformer":
        # Both attention kinds compute the same function: pick the one the device runs natively.
        config["attention"] = attention_for(device, config.get("attention", "auto"))
    model = build_model(checkpoint["model_type"], config)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), tokenizer


def training_data_path(checkpoint, override=None):
    """The text file to use with a checkpoint: override if given, else the one it was trained on (the path as given
    to train.py, which may be relative to another folder or gone by now; then the user must say)."""
    path = override or checkpoint["run_config"].get("data") or "data.txt"
    if not os.path.lexists(path) and not override:
        raise UserError(f"data file {path} not found (the file the checkpoint was trained on); name the corpus "
                        f"with --data")
    check_input_file(path, "data file")
    return path


def load_model(path, device="cpu"):
    """Load a checkpoint file for inference: (model, tokenizer, checkpoint), its weights laid out for decoding."""
    checkpoint = load_checkpoint(path)
    model, tokenizer = model_from_checkpoint(checkpoint, device, path)
    return lay_out_for_decoding(model), tokenizer, checkpoint

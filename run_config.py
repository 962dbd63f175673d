"""A training run's settings and command line, shared by train.py and sft.py: TrainConfig (the loop's, the optimizer's
and the outputs' settings, which each script extends with its own), the flags made from them, the input and output
files checked before any work, and --resume: the config the checkpoint stores, with the overrides flags.resumed allows.
"""
import contextlib
import itertools
import os
from collections import namedtuple
from dataclasses import dataclass
from typing import Optional

from checkpoint import load_checkpoint
from data import DATA_ORDERS
from device import DTYPE_CHOICES, choose_device, flush_denormals
from distributed import init_processes, is_main_process, shutdown
from errors import ArgumentParser, UserError
from files import check_input_file, check_output_path, claimed, same_or_inside
from flags import (BELOW_ONE, FIXED, FRACTION, LOCAL, NON_NEGATIVE, POSITIVE, add_flags, at_least, check_rules,
                   ckpt_setting, device_setting, flag_name, from_args, given_flags, resumed, seed_setting, setting)
from optimizers import OPTIMIZER_NAMES


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = setting(32, "sequences per micro-batch", at_least(1))
    grad_accum: int = setting(1, "micro-batches per optimizer step, summed over all torchrun processes", at_least(1))
    max_iters: int = setting(1500, "optimizer steps in total", at_least(0))
    time_limit: float = setting(0.0, "stop cleanly after this many seconds of this run, then evaluate and save; "
                                     "0 = none", NON_NEGATIVE)
    optimizer: str = setting("muon", "muon: Muon for hidden matrices + AdamW for the rest; or adamw, adam, sgd, "
                                     "torch-adamw", choices=OPTIMIZER_NAMES, resume=FIXED)
    lr: float = setting(3e-3, "peak learning rate of AdamW, Adam or SGD (with muon: of the embeddings, norms and "
                              "head)", POSITIVE, resume=FIXED)
    muon_lr: float = setting(0.06, "peak learning rate of Muon's matrices", POSITIVE, resume=FIXED)
    min_lr_ratio: float = setting(0.0, "final learning rate as a fraction of the peak", FRACTION)
    warmup_iters: int = setting(100, "linear warm-up steps", at_least(0))
    lr_decay_iters: int = setting(0, "cosine decay ends at this step; 0 = --max-iters", at_least(0))
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", NON_NEGATIVE, resume=FIXED)
    muon_weight_decay: float = setting(0.1, "decoupled weight decay of Muon's matrices", NON_NEGATIVE, resume=FIXED)
    beta2: float = setting(0.99, "Adam beta2", BELOW_ONE, resume=FIXED)
    average_last: float = setting(0.0, "share of the run, at its end, whose weights are averaged: the run ends with "
                                       "their mean (a share of --max-iters; 0 = the last step's weights)", FRACTION)
    data_order: str = setting("epochs", "how training blocks are drawn: epochs (every block once per pass over the "
                                        "training split, in random order) or random (random offsets, with "
                                        "replacement)", choices=DATA_ORDERS, resume=FIXED)
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 disables", NON_NEGATIVE)
    eval_interval: int = setting(250, "evaluate and save every N steps", at_least(1))
    eval_tokens: int = setting(32768, "val tokens per periodic evaluation", at_least(1))
    final_eval_tokens: int = setting(1_000_000, "val tokens for the final evaluation; 0 = the whole validation "
                                                "split", at_least(0))
    log_interval: int = setting(10, "log the mean train loss to the CSV every N steps", at_least(1))
    seed: int = seed_setting()
    device: str = device_setting()
    dtype: str = setting("auto", "autocast precision; auto: bfloat16 on CUDA GPUs that have it, else float16, "
                                 "float32 off CUDA", choices=DTYPE_CHOICES)
    compile: bool = setting(False, "torch.compile the model where that works")
    ckpt: str = ckpt_setting("checkpoint.pth", "checkpoint file")
    metrics: Optional[str] = setting(None, "CSV of the train loss and evaluations; '' skips it (default: --ckpt's "
                                           "name with .csv)", resume=LOCAL)
    plot: Optional[str] = setting(None, "loss-curve PNG written at the end; '' skips it (default: --ckpt's name "
                                        "with .png)", resume=LOCAL)

    def __post_init__(self):
        check_rules(self)

    @property
    def metrics_file(self):
        """The metrics CSV: --metrics, or named after the checkpoint, so one run's files never overwrite another's."""
        return os.path.splitext(self.ckpt)[0] + ".csv" if self.metrics is None else self.metrics

    @property
    def plot_file(self):
        return os.path.splitext(self.ckpt)[0] + ".png" if self.plot is None else self.plot

    def outputs(self):
        """{flag: path} of the files a run writes; '' skips the metrics CSV or the plot."""
        named = {"--ckpt": self.ckpt, "--metrics": self.metrics_file, "--plot": self.plot_file}
        return {flag: path for flag, path in named.items() if path or flag == "--ckpt"}


# What a command line asks of the run beyond its settings: --resume, --overwrite, and the names of the settings given.
Invocation = namedtuple("Invocation", "resume overwrite given")


def parse_command_line(settings_class, description, argv):
    parser = ArgumentParser(description=description)
    add_flags(parser, settings_class)
    parser.add_argument("--resume", action="store_true", help="finish the run saved in --ckpt exactly as it would "
                        "have gone on: its settings come from the checkpoint; flags you give override them (e.g. a "
                        "larger --max-iters trains it further)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even though --ckpt (or --metrics, --plot) exists")
    args = parser.parse_args(argv)
    return from_args(settings_class, args), Invocation(args.resume, args.overwrite, given_flags(parser, argv, args))


@contextlib.contextmanager
def claimed_outputs(settings, invocation, inputs):
    """Check the run's files before any work, and hold its outputs for the run. Its inputs (named by their settings)
    must be readable files, but a --resume run's inputs come from its checkpoint: only those given again are checked.
    No output may be one of the inputs, a fresh run never replaces a checkpoint, metrics CSV or plot without
    --overwrite, and a second run on the same --ckpt is refused while this one holds it."""
    for name in inputs:
        path, flag = getattr(settings, name), flag_name(name)
        if path == "" and name in invocation.given:
            raise UserError(f"{flag} is empty: name a file, or leave the flag out")
        if path and path != "char" and (not invocation.resume or name in invocation.given):
            check_input_file(path, flag)
    named, input_paths = settings.outputs(), [getattr(settings, name) for name in inputs]
    for flag, path in named.items():
        check_output_path(path, flag, input_paths)
    if any(same_or_inside(a, b) for a, b in itertools.combinations(named.values(), 2)):
        raise UserError("--ckpt, --metrics and --plot must be three different files")
    with contextlib.ExitStack() as held:
        if is_main_process():  # under torchrun, rank 0 holds the files for everyone
            for flag, path in named.items():
                held.enter_context(claimed(path, flag))
            for flag, path in named.items():
                if os.path.lexists(path) and not (invocation.resume or invocation.overwrite):
                    raise UserError(f"{path} ({flag}) already exists: pass --resume to continue that run, "
                                    f"--overwrite to replace it, or {flag} to write another file")
        yield


def resumed_run(settings, invocation):
    """(settings, checkpoint) of the run --resume finishes (flags.resumed); (settings, None) for a fresh run."""
    if not invocation.resume:
        return settings, None
    checkpoint = load_checkpoint(settings.ckpt)
    return resumed(settings, checkpoint["run_config"], invocation.given, settings.ckpt), checkpoint


@contextlib.contextmanager
def training_processes(device_name):
    device = choose_device(device_name)
    flush_denormals()
    procs, device = init_processes(device)
    try:
        yield procs, device
    finally:
        shutdown(procs)

"""The one training loop, under train.py (pretraining) and sft.py (instruction tuning).

What differs between the two is a task (tasks.py): where the batches come
from, the loss of a batch and what an evaluation measures. Everything else is
here, the same for both: the learning-rate schedule, gradient accumulation
across torchrun processes, autocast, clipping, the time limit, the NaN stop,
the metrics CSV and loss curve, checkpoints and resuming.

A stop from Ctrl-C or SIGTERM always lands between two steps: the signal only
raises a flag, the step in flight finishes, and then the checkpoint is saved.
So --resume continues exactly where the run stopped, wherever the signal came.
"""
import argparse
import contextlib
import itertools
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import Progress, build_checkpoint, load_checkpoint, progress_of, save_checkpoint
from device import (DEVICE_CHOICES, DTYPE_CHOICES, autocast, autocast_dtype, check_fits_in_memory, choose_device,
                    flush_denormals, maybe_compile)
from distributed import init_processes, is_main_process, mean_across, replicas_identical, shutdown
from errors import UserError
from files import check_input_file, check_output_path, claimed, same_or_inside
from optimizers import OPTIMIZER_NAMES, build_optimizer, lr_multiplier, set_lr_multiplier
from plots import plot_history, write_metrics
from timing import mfu, model_flops_per_token, peak_flops
from transformer import count_parameters

# How evaluations print their scores, and with how many decimals the CSV keeps them.
SCORE_LABELS = {"qa_loss": ("answer loss on the train questions", 4), "val_loss": ("val loss", 4),
                "val_ppl": ("val ppl", 3), "val_bpc": ("val bits/char", 4)}


# Flags that name this invocation's files and device rather than the run: --resume keeps them as given.
NOT_RESUMED = ("ckpt", "resume", "overwrite", "metrics", "plot", "device", "given")
# What a run saved before these flags existed was trained with: their defaults have changed since.
EARLIER_DEFAULTS = dict(positions="learned", norm="layer", mlp="gelu", muon_weight_decay=0.0, shuffle_words=0.0)


def add_training_flags(parser, **defaults):
    """The flags every training script shares; `defaults` sets each script's own defaults."""
    d = {**dict(ckpt="checkpoint.pth", batch_size=32, max_iters=1500, optimizer="muon", lr=3e-3, muon_lr=0.02,
                warmup_iters=100, min_lr_ratio=0.1, muon_weight_decay=0.0, eval_interval=250, eval_tokens=32768,
                final_eval_tokens=1_000_000), **defaults}
    a = parser.add_argument
    a("--batch-size", type=int, default=d["batch_size"], help="sequences per micro-batch, >= 1 (default: %(default)s)")
    a("--grad-accum", type=int, default=1,
      help="micro-batches per optimizer step, summed over all torchrun processes, >= 1 (default: %(default)s)")
    a("--max-iters", type=int, default=d["max_iters"], help="optimizer steps in total, >= 0 (default: %(default)s)")
    a("--time-limit", type=float, default=0,
      help="stop cleanly after this many seconds of this run, then evaluate and save; 0 = none (default: %(default)s)")
    a("--optimizer", default=d["optimizer"], choices=OPTIMIZER_NAMES,
      help="muon: Muon for hidden matrices + AdamW for the rest; or adamw, adam, sgd, torch-adamw "
           "(default: %(default)s; on --resume, the checkpoint's)")
    a("--lr", type=float, default=d["lr"],
      help="peak learning rate of AdamW, Adam or SGD (with muon: of the embeddings, norms and head), > 0 "
           "(default: %(default)s; on --resume, the checkpoint's)")
    a("--muon-lr", type=float, default=d["muon_lr"],
      help="peak learning rate of Muon's matrices, > 0 (default: %(default)s)")
    a("--min-lr-ratio", type=float, default=d["min_lr_ratio"],
      help="final learning rate as a fraction of the peak, in [0, 1] (default: %(default)s)")
    a("--warmup-iters", type=int, default=d["warmup_iters"], help="linear warm-up steps, >= 0 (default: %(default)s)")
    a("--lr-decay-iters", type=int, default=0,
      help="cosine decay ends at this step; 0 = --max-iters (default: %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices, >= 0 (default: %(default)s)")
    a("--muon-weight-decay", type=float, default=d["muon_weight_decay"],
      help="decoupled weight decay of Muon's matrices, >= 0 (default: %(default)s)")
    a("--beta2", type=float, default=0.99, help="Adam beta2, in [0, 1) (default: %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 disables (default: %(default)s)")
    a("--eval-interval", type=int, default=d["eval_interval"],
      help="evaluate and save every N steps, >= 1 (default: %(default)s)")
    a("--eval-tokens", type=int, default=d["eval_tokens"],
      help="val tokens per periodic evaluation, >= 1 (default: %(default)s)")
    a("--final-eval-tokens", type=int, default=d["final_eval_tokens"],
      help="val tokens for the final evaluation; 0 = the whole validation split (default: %(default)s)")
    a("--log-interval", type=int, default=10,
      help="log the mean train loss to the CSV every N steps, >= 1 (default: %(default)s)")
    a("--seed", type=int, default=1337, help="seeds everything, 0 to 2**63-1 (default: %(default)s)")
    a("--device", default="auto", choices=DEVICE_CHOICES, help="auto: cuda, mps, dml, then cpu (default: %(default)s)")
    a("--dtype", default="auto", choices=DTYPE_CHOICES,
      help="autocast precision; auto: bfloat16 on CUDA GPUs that have it, else float16, float32 off CUDA "
           "(default: %(default)s)")
    a("--compile", action="store_true", help="torch.compile the model where that works")
    a("--ckpt", "--checkpoint", dest="ckpt", default=d["ckpt"], help="checkpoint file (default: %(default)s)")
    a("--resume", action="store_true",
      help="finish the run saved in --ckpt exactly as it would have gone on: its flags come from the checkpoint; "
           "flags you give override them (e.g. a larger --max-iters trains it further)")
    a("--overwrite", action="store_true", help="start afresh even though --ckpt (or --metrics, --plot) exists")
    a("--metrics", default=None,
      help="CSV of the train loss and evaluations; '' skips it (default: --ckpt's name with .csv, checkpoint.csv)")
    a("--plot", default=None,
      help="loss-curve PNG written at the end; '' skips it (default: --ckpt's name with .png, checkpoint.png)")


def check_training_args(args):
    """UserError for any training flag out of range (NaN and infinity included).

    Unless flags name them, the metrics CSV and plot are named after the
    checkpoint, so one run's files never overwrite another's.
    """
    stem = os.path.splitext(args.ckpt)[0]
    args.metrics = stem + ".csv" if args.metrics is None else args.metrics
    args.plot = stem + ".png" if args.plot is None else args.plot
    def bad(flag, rule):
        raise UserError(f"--{flag} must be {rule}, got {getattr(args, flag.replace('-', '_'))}")

    for flag in ("batch-size", "grad-accum", "eval-interval", "eval-tokens", "log-interval"):
        if getattr(args, flag.replace("-", "_")) < 1:
            bad(flag, ">= 1")
    for flag in ("max-iters", "warmup-iters", "lr-decay-iters", "final-eval-tokens"):
        if getattr(args, flag.replace("-", "_")) < 0:
            bad(flag, ">= 0")
    for flag in ("lr", "muon-lr"):
        if not 0 < getattr(args, flag.replace("-", "_")) < math.inf:
            bad(flag, "a number > 0")
    for flag in ("time-limit", "grad-clip", "weight-decay", "muon-weight-decay"):
        if not 0 <= getattr(args, flag.replace("-", "_")) < math.inf:
            bad(flag, "a number >= 0")
    if not 0 <= args.min_lr_ratio <= 1:
        bad("min-lr-ratio", "in [0, 1]")
    if not 0 <= args.beta2 < 1:
        bad("beta2", "in [0, 1)")
    if not 0 <= args.seed < 2 ** 63:
        bad("seed", "in [0, 2**63)")


def check_input_files(args, flags):
    """UserError naming what it is for any input file that is not a readable file, before the outputs are
    checked. A --resume run's inputs come from its checkpoint: only those given again are checked here."""
    for flag in flags:
        name = flag.lstrip("-").replace("-", "_")
        path = getattr(args, name)
        if path == "" and name in args.given:
            raise UserError(f"{flag} is empty: name a file, or leave the flag out")
        if path and path != "char" and (not args.resume or name in args.given):
            check_input_file(path, flag)


@contextlib.contextmanager
def claimed_outputs(args, inputs):
    """Check every output path before any work, and hold --ckpt for the run.

    No output may be one of the run's input files; a fresh run never replaces
    a checkpoint, metrics CSV or plot without --overwrite; and a second run on
    the same --ckpt is refused while this one holds it.
    """
    outputs = {"--ckpt": args.ckpt, "--metrics": args.metrics, "--plot": args.plot}
    named = {flag: path for flag, path in outputs.items() if path or flag == "--ckpt"}  # '' skips the others
    for flag, path in named.items():
        check_output_path(path, flag, inputs)
    if any(same_or_inside(a, b) for a, b in itertools.combinations(named.values(), 2)):
        raise UserError("--ckpt, --metrics and --plot must be three different files")
    if not is_main_process():  # under torchrun, rank 0 holds the files for everyone
        yield
        return
    with contextlib.ExitStack() as held:
        for flag, path in named.items():
            held.enter_context(claimed(path, flag))
        if not (args.resume or args.overwrite):
            for flag, path in named.items():
                if os.path.lexists(path):
                    raise UserError(f"{path} ({flag}) already exists: pass --resume to continue that run, "
                                    f"--overwrite to replace it, or {flag} to write another file")
        yield


def given_flags(parser, argv, args):
    """The names of the flags the command line gave; every other name in args holds its default."""
    unset = object()
    seen = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return sorted(name for name, value in vars(seen).items() if value is not unset)


def resumed_run(args, fixed, own=()):
    """The checkpoint --resume continues (None for a fresh run), with args set to the run it holds.

    A bare --resume finishes exactly the run that was interrupted: every flag
    comes from the checkpoint but those that name this invocation's files and
    device (NOT_RESUMED, and the script's `own`). A flag given on the command
    line overrides the saved one (a longer --max-iters, another schedule),
    except the `fixed` flags, whose values the saved weights and optimizer
    state fit: those may be given only as they were.
    """
    if not args.resume:
        return None
    checkpoint = load_checkpoint(args.ckpt)
    recorded = checkpoint.get("train_args") or {}
    for name, value in vars(args).items():
        if name in NOT_RESUMED or name in own:
            continue
        saved = recorded.get(name, EARLIER_DEFAULTS.get(name, value))
        if value is not None and saved is not None and _kind(saved) != _kind(value):
            raise UserError(f"{args.ckpt} is damaged: its --{name.replace('_', '-')} is {saved!r}")
        if name not in args.given:
            setattr(args, name, saved)
        elif name in fixed and value != saved:
            raise UserError(f"--{name.replace('_', '-')} {value} cannot change when resuming: {args.ckpt} was "
                            f"trained with {saved}, and its weights and optimizer state fit only that")
    return checkpoint


def _kind(value):
    """A flag value's type, with int and float as one: a number."""
    return "number" if type(value) in (int, float) else type(value)


@contextlib.contextmanager
def training_processes(device_name):
    """(processes, device) for a run: the device chosen, torchrun's processes joined, and left at the end."""
    device = choose_device(device_name)
    flush_denormals()
    procs, device = init_processes(device)
    try:
        yield procs, device
    finally:
        shutdown(procs)


class StopSignals:
    """Ctrl-C and SIGTERM during training: the first asks to stop after the current step, a second stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Run:
    """Everything the loop needs; the scripts fill it in."""
    args: object  # the script's flags, add_training_flags' among them
    model: torch.nn.Module
    tokenizer: object
    task: object  # tasks.py: train_batches(n), loss(model, batch), evaluate(model, max_tokens, dtype), generator
    procs: object
    device: torch.device
    description: str  # the start-up line
    train_args: dict = field(default_factory=dict)  # the flags the checkpoint records
    chat: bool = False
    resume_from: dict = None  # the loaded checkpoint of a resumed run
    eval_at_start: bool = False  # evaluate before the first step, to see what training changes


def train(run):
    """Train run.model on run.task; returns the final scores with 'step' and 'elapsed_s' (None off rank 0)."""
    args, model, task, procs, device = run.args, run.model, run.task, run.procs, run.device
    if args.grad_accum % procs.world_size:
        raise UserError(f"--grad-accum {args.grad_accum} must be a multiple of the {procs.world_size} processes")
    optimizer = build_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                betas=(0.9, args.beta2), muon_lr=args.muon_lr,
                                muon_weight_decay=args.muon_weight_decay)
    progress = progress_of(run.resume_from, args.ckpt) if run.resume_from else None
    if progress:
        try:
            optimizer.load_state_dict(run.resume_from["optimizer"])
            torch.set_rng_state(progress.rng["torch"])
            task.generator.set_state(progress.rng["batches"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"{args.ckpt} cannot be resumed: its optimizer or generator state does not fit "
                            f"({str(e).splitlines()[0][:120]})") from None
    else:
        progress = Progress()
    if run.resume_from and progress.step >= args.max_iters:
        raise UserError(f"{args.ckpt} is at step {progress.step} already: pass a --max-iters above that to train "
                        f"it further (evaluate.py scores it as it is)")
    check_batch_fits(args, model, device)
    dtype = autocast_dtype(device, args.dtype)
    say = tqdm.write if procs.is_main else (lambda *a, **k: None)
    say(run.description + f", device {device}" + (f", {procs.world_size} processes" if procs.enabled else "")
        + (f", autocast {str(dtype).replace('torch.', '')}" if dtype else "")
        + (f", resuming at step {progress.step}" if run.resume_from else ""))
    loop = Loop(run, optimizer, progress, dtype, say)
    with StopSignals() as stop:
        return loop.train(stop)


def check_batch_fits(args, model, device):
    """UserError if a step's batches and activations surely cannot fit in memory, before the first is drawn.

    Every step draws --grad-accum micro-batches of token ids (8 bytes each),
    and one micro-batch's forward pass keeps about 16 floats per layer and
    position for the backward pass, plus its logits.
    """
    c = model.config
    tokens = args.batch_size * (c.block_size + 1)
    need = 8 * tokens * args.grad_accum + 4 * tokens * (16 * c.n_layer * c.n_embd + 2 * c.vocab_size)
    check_fits_in_memory(count_parameters(model), device, need,
                         what=f"--batch-size {args.batch_size} with --grad-accum {args.grad_accum}")


class Loop:
    """One run of the loop: its state between steps, its log rows and its checkpoints."""

    def __init__(self, run, optimizer, progress, dtype, say):
        self.run, self.args, self.model, self.task = run, run.args, run.model, run.task
        self.optimizer, self.progress, self.dtype, self.say = optimizer, progress, dtype, say
        self.procs, self.device = run.procs, run.device
        self.start, self.elapsed_before = time.time(), progress.elapsed_s
        self.saved_step = progress.step if run.resume_from else None
        self.losses, self.seconds = [], 0.0  # of the steps since the last log row
        self.tokens_per_step = run.args.batch_size * run.args.grad_accum * run.model.config.block_size
        self.flops_per_token = model_flops_per_token(run.model)
        self.lr = 0.0

    def elapsed(self):
        return self.elapsed_before + time.time() - self.start

    def snapshot(self):
        self.progress.elapsed_s = self.elapsed()
        self.progress.rng = {"torch": torch.get_rng_state(), "batches": self.task.generator.get_state()}
        return build_checkpoint(self.model, self.run.tokenizer, self.optimizer, self.progress,
                                self.run.train_args, self.run.chat)

    def stop_diverged(self, what):
        """Stop a run whose weights went bad, leaving the last good checkpoint as it is."""
        kept = f"{self.args.ckpt} keeps step {self.saved_step}" if self.saved_step is not None else "nothing was saved"
        raise UserError(f"{what} at step {self.progress.step}; stopped: {kept}. Try a lower --lr or --muon-lr")

    def save(self):
        if self.procs.is_main:
            save_checkpoint(self.args.ckpt, self.snapshot())
            write_metrics(self.args.metrics, self.progress.history)
            self.saved_step = self.progress.step

    def log_row(self, max_tokens=None, evaluate=False):
        """Append a history row: the mean train loss since the last one and, when evaluating, the scores.

        Returns the scores, unrounded ({} without an evaluation).
        """
        scores = {}
        row = {"step": self.progress.step, "elapsed_s": round(self.elapsed(), 2), "train_loss": None, "lr": None,
               "tokens_per_s": None}  # None: no steps since the last row (an empty cell in the CSV)
        if self.losses:
            tokens_per_s = self.tokens_per_step * len(self.losses) / max(self.seconds, 1e-9)
            row.update(train_loss=round(sum(self.losses) / len(self.losses), 4), lr=float(f"{self.lr:.6g}"),
                       tokens_per_s=round(tokens_per_s))
        if evaluate:
            scores = self.task.evaluate(self.model, max_tokens, self.dtype)
            # the last step's update can break the weights after its own loss was fine: never save them
            if not math.isfinite(scores["val_loss"]):
                self.stop_diverged(f"the val loss became {scores['val_loss']}")
            row.update({k: round(v, SCORE_LABELS[k][1]) for k, v in scores.items()})
            best = self.progress.best_val_loss
            self.progress.best_val_loss = scores["val_loss"] if best is None else min(best, scores["val_loss"])
            shown = [f"train loss {row['train_loss']:.4f}"] if self.losses else []
            shown += [f"{SCORE_LABELS[k][0]} {v:.{SCORE_LABELS[k][1]}f}" for k, v in scores.items()]
            if self.losses:
                peak = peak_flops(self.device) * self.procs.world_size
                utilization = mfu(row["tokens_per_s"], self.flops_per_token, peak)
                shown += [f"{row['tokens_per_s']:,} tokens/s, MFU {utilization:.0%}"]
            self.say(f"step {self.progress.step}: " + ", ".join(shown))
        self.progress.history.append(row)
        self.losses, self.seconds = [], 0.0
        return scores

    def step(self, forward, scaler, stop):
        """One optimizer step; returns (loss, out of time, stop requested), agreed by every process."""
        args, procs, task = self.args, self.procs, self.task
        multiplier = lr_multiplier(self.progress.step, args.warmup_iters, args.lr_decay_iters or args.max_iters,
                                   args.min_lr_ratio)
        set_lr_multiplier(self.optimizer, multiplier)
        self.lr = args.lr * multiplier
        # Every process draws the same global set of micro-batches and trains on its own share,
        # so N processes take exactly the step one process takes with the whole batch.
        share = args.grad_accum // procs.world_size
        mine = task.train_batches(args.grad_accum)[procs.rank * share: (procs.rank + 1) * share]
        losses = []
        for i, batch in enumerate(mine):
            # DDP averages gradients across processes after a backward; skip it until the last micro-batch
            last = i == len(mine) - 1
            with contextlib.nullcontext() if last or not procs.enabled else forward.no_sync():
                with autocast(self.device, self.dtype):
                    loss = task.loss(forward, [t.to(self.device) for t in batch])
                scaler.scale(loss / len(mine)).backward()
            losses.append(loss.item())
        out_of_time = bool(args.time_limit) and time.time() - self.start >= args.time_limit
        loss, out_of_time, stopping = mean_across(procs, [sum(losses) / len(losses), float(out_of_time),
                                                          float(stop.requested)], self.device)
        if not math.isfinite(loss):
            self.stop_diverged(f"the loss became {loss}")
        if args.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            # foreach kernels only on CUDA: elsewhere (DirectML) they would fall back to the CPU every step
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip,
                                           foreach=self.device.type == "cuda")
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return loss, out_of_time > 0, stopping > 0

    def train(self, stop):
        args, model, procs, progress = self.args, self.model, self.procs, self.progress
        forward = model  # what a step calls: the model, maybe compiled, maybe wrapped in DDP
        if args.compile:
            forward = maybe_compile(model, torch.zeros(1, model.config.block_size, dtype=torch.long,
                                                       device=self.device))
        if procs.enabled:
            forward = DistributedDataParallel(forward, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)  # float16 gradients underflow
        bar = tqdm(total=args.max_iters, initial=progress.step, desc="training", dynamic_ncols=True,
                   file=sys.stderr, disable=not procs.is_main)
        smoothed = math.nan
        try:
            if self.run.eval_at_start and progress.step == 0 and procs.is_main:
                self.log_row(args.eval_tokens, evaluate=True)
            model.train()
            while progress.step < args.max_iters:
                t0 = time.time()
                loss, out_of_time, stopping = self.step(forward, scaler, stop)
                self.losses.append(loss)
                self.seconds += time.time() - t0
                smoothed = loss if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * loss
                bar.update(1)
                tokens_per_s = self.tokens_per_step * len(self.losses) / self.seconds
                bar.set_postfix(loss=f"{smoothed:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                if stopping:
                    bar.close()
                    if procs.is_main:
                        self.log_row()
                        self.save()
                        print(f"\ninterrupted at step {progress.step}: saved {args.ckpt}; continue with --resume",
                              file=sys.stderr)
                    sys.exit(130)
                if out_of_time:
                    self.say(f"time limit of {args.time_limit:g} s reached at step {progress.step}")
                    break
                evaluate = progress.step % args.eval_interval == 0 and progress.step < args.max_iters
                if procs.is_main and (evaluate or progress.step % args.log_interval == 0) \
                        and progress.step < args.max_iters:
                    self.log_row(args.eval_tokens, evaluate)
                    if evaluate:
                        self.save()
        except KeyboardInterrupt:  # a second Ctrl-C: the step in flight is half done, so nothing is saved
            bar.close()
            kept = f"{args.ckpt} keeps step {self.saved_step}" if self.saved_step is not None else "nothing saved"
            print(f"\ninterrupted again: stopped at once, {kept}", file=sys.stderr)
            sys.exit(130)
        finally:
            bar.close()
        identical = replicas_identical(procs, model)
        if not procs.is_main:
            return None
        if procs.enabled:
            print(f"parameters identical on all {procs.world_size} processes: {'yes' if identical else 'NO'}")
        scores = self.log_row(args.final_eval_tokens or None, evaluate=True)
        self.save()
        plot_history(args.plot, progress.history)
        skipped = [f"no {what} (--{flag} '')" for flag, what in (("metrics", "metrics CSV"), ("plot", "plot"))
                   if not getattr(args, flag)]
        print(f"saved {', '.join(p for p in (args.ckpt, args.metrics, args.plot) if p)}"
              + "".join(f"; {s}" for s in skipped))
        print(f"final: step={progress.step} " + " ".join(f"{k}={v:.{SCORE_LABELS[k][1]}f}" for k, v in scores.items())
              + f" elapsed_s={self.elapsed():.1f}")
        if stop.requested:  # it came during the final evaluation: the run is complete, and saved
            print("\ninterrupted after the last step: the run is complete and saved", file=sys.stderr)
            sys.exit(130)
        return {"step": progress.step, **scores, "elapsed_s": self.elapsed()}

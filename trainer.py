"""The one training loop, under train.py (pretraining) and sft.py (instruction tuning).

What differs between the two is a task (tasks.py): its batches, the loss of a batch and what an evaluation measures.
The rest is here: the learning-rate schedule, gradient accumulation across torchrun processes, autocast, clipping, the
time limit, the NaN stop, the metrics CSV and loss curve, checkpoints and resuming.

A stop from Ctrl-C or SIGTERM always lands between two steps: the signal only raises a flag, the step in flight
finishes, then the checkpoint is saved and --resume continues exactly there. A second stop ends the run at once.
"""
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import Progress, checkpoint_dict, resumed_progress, save_checkpoint
from device import autocast, autocast_dtype, check_fits_in_memory, maybe_compile
from distributed import mean_across, replicas_identical
from errors import Stopped, UserError, deferred_stop
from optimizers import WeightAverage, build_optimizer, lr_multiplier, set_lr_multiplier
from plots import plot_history, write_metrics
from timing import mfu, model_flops_per_token, peak_flops
from transformer import count_parameters, model_type_of

# How evaluations print their scores, and with how many decimals the CSV keeps them.
SCORE_LABELS = {"qa_loss": ("answer loss on the train questions", 4), "val_loss": ("val loss", 4),
                "val_ppl": ("val ppl", 3), "val_bpc": ("val bits/char", 4)}


@dataclass
class Run:
    """Everything the loop needs; the scripts fill it in."""
    settings: object  # run_config.TrainConfig, or a script's extension of it
    model: torch.nn.Module
    tokenizer: object
    task: object  # tasks.py: train_batches(n), loss(model, batch), evaluate(model, max_tokens, dtype), draw_state()
    procs: object
    device: torch.device
    description: str  # the start-up line
    run_config: dict = field(default_factory=dict)  # the settings the checkpoint records
    chat: bool = False
    resume_from: dict = None  # the loaded checkpoint of a resumed run
    eval_at_start: bool = False  # evaluate before the first step, to see what training changes


def train(run):
    """Train run.model on run.task; returns the final scores with 'step' and 'elapsed_s' (None off rank 0).
    Raises Stopped when Ctrl-C or SIGTERM ended the run after saving it."""
    s, procs, c = run.settings, run.procs, run.model.config
    if s.grad_accum % procs.world_size:
        raise UserError(f"--grad-accum {s.grad_accum} must be a multiple of the {procs.world_size} processes")
    optimizer = build_optimizer(run.model, s.optimizer, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, s.beta2),
                                muon_lr=s.muon_lr, muon_weight_decay=s.muon_weight_decay)
    progress = Progress()
    if run.resume_from:
        progress = resumed_progress(run.resume_from, s.ckpt, optimizer, run.task)
        if progress.step >= s.max_iters:
            raise UserError(f"{s.ckpt} is at step {progress.step} already: pass a --max-iters above that to train "
                            f"it further (evaluate.py scores it as it is)")
    # Fits in memory, before the first batch is drawn? Every step draws --grad-accum micro-batches of token ids (8 bytes
    # each), and one micro-batch's forward pass keeps about 16 floats per layer and position, plus its logits.
    tokens = s.batch_size * (c.block_size + 1)
    check_fits_in_memory(count_parameters(run.model), run.device,
                         8 * tokens * s.grad_accum + 4 * tokens * (16 * c.n_layer * c.n_embd + 2 * c.vocab_size),
                         what=f"--batch-size {s.batch_size} with --grad-accum {s.grad_accum}")
    dtype = autocast_dtype(run.device, s.dtype)
    say = tqdm.write if procs.is_main else (lambda *a, **k: None)
    say(run.description + f", device {run.device}" + (f", {procs.world_size} processes" if procs.enabled else "")
        + (f", autocast {str(dtype).replace('torch.', '')}" if dtype else "")
        + (f", resuming at step {progress.step}" if run.resume_from else ""))
    return Loop(run, optimizer, progress, dtype, say, resumed_average(run, progress, say)).train()


def resumed_average(run, progress, say):
    """The WeightAverage a run goes on with: empty, or the one its checkpoint holds where that is the mean of the
    steps since the averaging began (a --max-iters or --average-last given to --resume can move that start)."""
    average, saved = WeightAverage(run.model), progress.weight_average
    if saved is not None:
        try:
            average.load_state_dict(saved)
        except ValueError as e:
            raise UserError(f"{run.settings.ckpt} cannot be resumed: {e}") from None
    due = max(0, progress.step - first_averaged_step(run.settings) + 1)  # the steps it should hold by now
    if average.steps == due:
        return average
    say(f"the mean of the weights starts afresh at step {progress.step}: {run.settings.ckpt} holds the mean of "
        f"{average.steps} steps, and --max-iters with --average-last now ask for the last {due}")
    return WeightAverage(run.model)


def first_averaged_step(settings):
    """The first step whose weights enter the mean: the run's last --average-last share of --max-iters."""
    return settings.max_iters - round(settings.average_last * settings.max_iters) + 1


class Loop:
    """One run of the loop: its state between steps, its log rows and its checkpoints."""

    def __init__(self, run, optimizer, progress, dtype, say, average):
        self.run, self.s, self.model, self.task = run, run.settings, run.model, run.task
        self.optimizer, self.progress, self.dtype, self.say = optimizer, progress, dtype, say
        self.average, self.first_averaged = average, first_averaged_step(run.settings)
        self.procs, self.device = run.procs, run.device
        self.start, self.elapsed_before = time.time(), progress.elapsed_s
        self.saved_step = progress.step if run.resume_from else None
        self.losses, self.seconds = [], 0.0  # of the steps since the last log row
        self.tokens_per_step = self.s.batch_size * self.s.grad_accum * run.model.config.block_size
        self.flops_per_token = model_flops_per_token(run.model)
        self.lr, self.smoothed = 0.0, math.nan  # the progress bar shows the loss smoothed over about ten steps

    def train(self):
        """Step until --max-iters (or the time limit), logging, evaluating and saving; then the final evaluation."""
        s, progress, model, device = self.s, self.progress, self.model, self.device
        forward = model  # what a step calls: the model, maybe compiled, maybe wrapped for DistributedDataParallel
        if s.compile:
            forward = maybe_compile(model, torch.zeros(1, model.config.block_size, dtype=torch.long, device=device))
        if self.procs.enabled:
            forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        bar = tqdm(total=s.max_iters, initial=progress.step, desc="training", dynamic_ncols=True, file=sys.stderr,
                   disable=not self.procs.is_main)
        with deferred_stop() as stop:
            try:
                with bar:
                    if self.run.eval_at_start and progress.step == 0 and self.procs.is_main:
                        self.log(s.eval_tokens, evaluate=True)
                    model.train()
                    out_of_time = False
                    while progress.step < s.max_iters and not out_of_time:
                        out_of_time, stopping = self.step(forward, scaler, stop)
                        bar.update(1)
                        bar.set_postfix(loss=f"{self.smoothed:.3f}", tok_s=f"{self.tokens_per_s():,.0f}")
                        if stopping:
                            self.save_and_stop()
                        if out_of_time:
                            self.say(f"time limit of {s.time_limit:g} s reached at step {progress.step}")
                        elif progress.step < s.max_iters and self.procs.is_main:
                            if progress.step % s.eval_interval == 0:
                                self.log(s.eval_tokens, evaluate=True)
                                self.save()
                            elif progress.step % s.log_interval == 0:
                                self.log()
            except KeyboardInterrupt:  # the step in flight is half done, so nothing is saved
                raise Stopped(f"interrupted again: stopped at once, {self.kept()}") from None
            return self.finish(stop)

    def step(self, forward, scaler, stop):
        """One optimizer step; returns (out of time, stop requested), agreed by every process."""
        t0, s, procs, task = time.time(), self.s, self.procs, self.task
        multiplier = lr_multiplier(self.progress.step, s.warmup_iters, s.lr_decay_iters or s.max_iters, s.min_lr_ratio)
        set_lr_multiplier(self.optimizer, multiplier)
        self.lr = s.lr * multiplier
        # Every process draws the same global set of micro-batches and trains on its own share,
        # so N processes take exactly the step one process takes with the whole batch.
        share = s.grad_accum // procs.world_size
        mine = task.train_batches(s.grad_accum)[procs.rank * share: (procs.rank + 1) * share]
        losses = []
        for i, batch in enumerate(mine):
            # DDP averages gradients across processes after a backward; skip it until the last micro-batch
            with contextlib.nullcontext() if i == len(mine) - 1 or not procs.enabled else forward.no_sync():
                with autocast(self.device, self.dtype):
                    loss = task.loss(forward, [t.to(self.device) for t in batch])
                scaler.scale(loss / len(mine)).backward()
            losses.append(loss.item())
        out_of_time = bool(s.time_limit) and time.time() - self.start >= s.time_limit
        loss, out_of_time, stopping = mean_across(procs, [sum(losses) / len(losses), float(out_of_time),
                                                          float(stop.requested)], self.device)
        if not math.isfinite(loss):
            self.stop_diverged(f"the loss became {loss}")
        if s.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            # foreach kernels only on CUDA: elsewhere (DirectML) they would fall back to the CPU every step
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip, foreach=self.device.type == "cuda")
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        if self.progress.step >= self.first_averaged:
            self.average.add()
        self.losses.append(loss)
        self.seconds += time.time() - t0
        self.smoothed = loss if math.isnan(self.smoothed) else 0.9 * self.smoothed + 0.1 * loss
        return out_of_time > 0, stopping > 0

    def tokens_per_s(self):
        return self.tokens_per_step * len(self.losses) / max(self.seconds, 1e-9)

    def log(self, max_tokens=None, evaluate=False):
        """Append a history row: the mean train loss since the last row and, when evaluating, the scores, which
        it prints and returns ({} without an evaluation)."""
        row = {"step": self.progress.step, "elapsed_s": round(self.elapsed(), 2), "train_loss": None, "lr": None,
               "tokens_per_s": None}  # None: no steps since the last row (an empty cell in the CSV)
        if self.losses:
            row.update(train_loss=round(sum(self.losses) / len(self.losses), 4), lr=float(f"{self.lr:.6g}"),
                       tokens_per_s=round(self.tokens_per_s()))
        scores = self.task.evaluate(self.model, max_tokens, self.dtype) if evaluate else {}
        if evaluate:
            # A non-finite val loss stops the run: the last step's update can break the weights after its own loss was
            # fine, and they are never saved.
            val_loss, best = scores["val_loss"], self.progress.best_val_loss
            if not math.isfinite(val_loss):
                self.stop_diverged(f"the val loss became {val_loss}")
            self.progress.best_val_loss = val_loss if best is None else min(best, val_loss)
            row.update({k: round(v, SCORE_LABELS[k][1]) for k, v in scores.items()})
            shown = [f"train loss {row['train_loss']:.4f}"] if self.losses else []
            shown += [f"{SCORE_LABELS[k][0]} {v:.{SCORE_LABELS[k][1]}f}" for k, v in scores.items()]
            if self.losses:
                utilization = mfu(row["tokens_per_s"], self.flops_per_token,  # against the autocast dtype's peak
                                  peak_flops(self.device, dtype=self.dtype) * self.procs.world_size)
                shown += [f"{row['tokens_per_s']:,} tokens/s, MFU {utilization:.0%}"]
            self.say(f"step {self.progress.step}: " + ", ".join(shown))
        self.progress.history.append(row)
        self.losses, self.seconds = [], 0.0
        return scores

    def elapsed(self):
        return self.elapsed_before + time.time() - self.start

    def save(self):  # on rank 0, as log() is
        self.progress.elapsed_s = self.elapsed()
        self.progress.weight_average = self.average.state_dict() if self.average.steps else None
        self.progress.rng = {"torch": torch.get_rng_state(), **self.task.draw_state()}
        model, run = self.model, self.run
        save_checkpoint(self.s.ckpt, checkpoint_dict(model_type_of(model), asdict(model.config), model.state_dict(),
                                                     run.tokenizer, self.optimizer.state_dict(), self.progress,
                                                     run.run_config, run.chat))
        write_metrics(self.s.metrics_file, self.progress.history)
        self.saved_step = self.progress.step

    def kept(self):
        return f"{self.s.ckpt} keeps step {self.saved_step}" if self.saved_step is not None else "nothing was saved"

    def stop_diverged(self, what):
        """Stop a run whose weights went bad, leaving the last good checkpoint as it is."""
        raise UserError(f"{what} at step {self.progress.step}; stopped: {self.kept()}. Try a lower --lr or --muon-lr")

    def save_and_stop(self):
        if not self.procs.is_main:
            raise Stopped()  # rank 0 saves and says so
        self.log()
        self.save()
        raise Stopped(f"interrupted at step {self.progress.step}: saved {self.s.ckpt}; continue with --resume")

    def finish(self, stop):
        """The final evaluation, saved with the loss curve; returns the final scores (None off rank 0)."""
        s, procs = self.s, self.procs
        if self.average.steps:  # the run ends as the mean of its last steps' weights, which a resume no longer needs
            self.average.copy_to_model()
            self.say(f"the final weights are the mean of the last {self.average.steps} steps' (--average-last "
                     f"{s.average_last:g})")
            self.average = WeightAverage(self.model)
        identical = replicas_identical(procs, self.model)
        if not procs.is_main:
            return None
        if procs.enabled:
            print(f"parameters identical on all {procs.world_size} processes: {'yes' if identical else 'NO'}")
        scores = self.log(s.final_eval_tokens or None, evaluate=True)
        self.save()
        plot_history(s.plot_file, self.progress.history)
        skipped = [f"no {what} (--{flag} '')" for flag, what in (("metrics", "metrics CSV"), ("plot", "plot"))
                   if getattr(s, flag) == ""]
        print(f"saved {', '.join(p for p in s.outputs().values())}" + "".join(f"; {x}" for x in skipped))
        shown = " ".join(f"{k}={v:.{SCORE_LABELS[k][1]}f}" for k, v in scores.items())
        print(f"final: step={self.progress.step} {shown} elapsed_s={self.elapsed():.1f}")
        if stop.requested:  # it came during the final evaluation: the run is complete, and saved
            raise Stopped("interrupted after the last step: the run is complete and saved")
        return {"step": self.progress.step, **scores, "elapsed_s": self.elapsed()}

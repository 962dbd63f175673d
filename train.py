"""Train a language model on a text file.

    python train.py                              # char-level Transformer on data.txt
    python train.py --max-iters 200 --resume     # continue checkpoint.pth
    python train.py --model rnn                  # the CharRNN baseline

The last --val-fraction of the token stream is held out for validation. Every
--eval-interval steps we print train and val loss, val perplexity and val bits
per character (comparable across tokenizers), and save checkpoint.pth.
"""
import contextlib
import csv
import math
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from data import Batches, corpus_chars, tokenize_to_memmap
from device import (DEVICE_CHOICES, DTYPE_CHOICES, attention_for, autocast, autocast_dtype, choose_device,
                    flush_denormals, maybe_compile)
from distributed import init_processes, mean_across, replicas_identical, shutdown
from errors import ArgumentParser, UserError, run_main
from files import atomic_write
from optimizers import OPTIMIZER_NAMES, build_optimizer, set_lr_multiplier
from plots import plot_history
from tokenizer import CharTokenizer, tokenizer_from_dict
from timing import mfu, model_flops_per_token, peak_flops, tokens_per_second
from transformer import MODELS, build_model, config_dict, count_parameters

# Flags that define the model and its data, and the optimizer whose saved state
# only fits itself: a resumed run takes them from the checkpoint.
RESUMED_FLAGS = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "attention", "rnn_cell",
                 "optimizer")


def parse_args(argv=None):
    p = ArgumentParser(description="Train a GPT-style Transformer (or a CharRNN) on a text file.")
    a = p.add_argument
    a("--data", default="data.txt", help="training text, UTF-8 (default: %(default)s)")
    a("--tokenizer", default=None,
      help="'char', or a tokenizer.json from train_tokenizer.py (default: char; on --resume, the checkpoint's)")
    a("--model", default="transformer", choices=list(MODELS), help="architecture (default: %(default)s)")
    a("--n-layer", type=int, default=4, help="layers (default: %(default)s)")
    a("--n-head", type=int, default=4, help="attention heads (default: %(default)s)")
    a("--n-embd", type=int, default=128, help="embedding width; RNN hidden size (default: %(default)s)")
    a("--block-size", type=int, default=128, help="context length in tokens (default: %(default)s)")
    a("--dropout", type=float, default=0.0, help="dropout rate (default: %(default)s)")
    a("--bias", action="store_true", help="use biases in Linear and LayerNorm layers")
    a("--attention", default="auto", choices=["auto", "sdpa", "explicit"],
      help="sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, which DirectML runs natively; "
           "auto: explicit on DirectML, else sdpa (default: %(default)s)")
    a("--rnn-cell", default="gru", choices=["gru", "lstm"], help="cell of --model rnn (default: %(default)s)")
    a("--batch-size", type=int, default=32, help="sequences per micro-batch (default: %(default)s)")
    a("--grad-accum", type=int, default=1,
      help="micro-batches per optimizer step, summed over all torchrun processes (default: %(default)s)")
    a("--max-iters", type=int, default=1500, help="optimizer steps in total (default: %(default)s)")
    a("--time-limit", type=float, default=0,
      help="stop cleanly after this many seconds of this run, then evaluate and save; 0 = none (default: %(default)s)")
    a("--optimizer", default="muon", choices=OPTIMIZER_NAMES,
      help="muon: Muon for hidden matrices + AdamW for the rest; or adamw, adam, sgd, torch-adamw "
           "(default: %(default)s; on --resume, the checkpoint's)")
    a("--lr", type=float, default=3e-3,
      help="peak learning rate of AdamW, Adam or SGD (with muon: of the embeddings, norms and head) "
           "(default: %(default)s)")
    a("--muon-lr", type=float, default=0.02, help="peak learning rate of Muon's matrices (default: %(default)s)")
    a("--min-lr-ratio", type=float, default=0.1,
      help="final learning rate as a fraction of --lr (default: %(default)s)")
    a("--warmup-iters", type=int, default=100, help="linear warm-up steps (default: %(default)s)")
    a("--lr-decay-iters", type=int, default=0,
      help="cosine decay ends at this step; 0 = --max-iters (default: %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default: %(default)s)")
    a("--beta2", type=float, default=0.99, help="Adam beta2 (default: %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 disables (default: %(default)s)")
    a("--val-fraction", type=float, default=0.1, help="last fraction of the tokens held out (default: %(default)s)")
    a("--eval-interval", type=int, default=250, help="evaluate and save every N steps (default: %(default)s)")
    a("--eval-tokens", type=int, default=32768,
      help="val tokens per periodic evaluation (default: %(default)s)")
    a("--final-eval-tokens", type=int, default=1_000_000,
      help="val tokens for the final evaluation; 0 = the whole validation split (default: %(default)s)")
    a("--seed", type=int, default=1337, help="seeds everything (default: %(default)s)")
    a("--device", default="auto", choices=DEVICE_CHOICES, help="auto: cuda, mps, dml, then cpu (default: %(default)s)")
    a("--dtype", default="auto", choices=DTYPE_CHOICES,
      help="autocast precision; auto: bfloat16 on CUDA GPUs that have it, else float16, float32 off CUDA "
           "(default: %(default)s)")
    a("--compile", action="store_true", help="torch.compile the model where that works")
    a("--ckpt", "--checkpoint", dest="ckpt", default="checkpoint.pth", help="checkpoint file (default: %(default)s)")
    a("--resume", action="store_true", help="continue training from --ckpt")
    a("--overwrite", action="store_true", help="start afresh even though --ckpt exists, replacing it")
    a("--metrics", default="metrics.csv", help="CSV of the evaluations (default: %(default)s)")
    a("--plot", default="loss_curve.png", help="loss-curve PNG written at the end; '' skips it (default: %(default)s)")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args):
    positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "eval_interval",
                "eval_tokens")
    for name in positive:
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if min(args.max_iters, args.time_limit, args.grad_clip, args.final_eval_tokens) < 0:
        raise UserError("--max-iters, --time-limit, --grad-clip and --final-eval-tokens must be >= 0")
    if args.lr <= 0 or args.muon_lr <= 0:
        raise UserError("--lr and --muon-lr must be > 0")
    if not 0 <= args.val_fraction < 1:
        raise UserError("--val-fraction must be in [0, 1)")
    if not 0 <= args.dropout < 1:
        raise UserError("--dropout must be in [0, 1)")
    if args.model == "transformer" and args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")


def lr_multiplier(step, warmup, decay_iters, min_ratio):
    """Linear warm-up to 1, then a cosine down to min_ratio at decay_iters."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_iters:
        return min_ratio
    progress = (step - warmup) / max(1, decay_iters - warmup)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


@torch.no_grad()
def evaluate(model, batches, batch_size, device, max_tokens=None):
    """Mean next-token loss over the validation windows (nats per token).

    Targets of -1 (masked out, as in sft.py's chat rows) count for nothing.
    """
    model.eval()
    total, count = 0.0, 0
    for x, y in batches.val_batches(batch_size, max_tokens):
        _, loss = model(x.to(device), y.to(device))
        n = int((y != -1).sum())
        total += loss.item() * n if n else 0.0
        count += n
    model.train()
    return total / count if count else float("nan")


def mean(values):
    return sum(values) / len(values) if values else float("nan")


def load_tokenizer(spec, data_path):
    if spec == "char":
        chars, n_chars = corpus_chars(data_path)
        if n_chars == 0:
            raise UserError(f"data file {data_path} is empty: give it some text to learn from")
        return CharTokenizer(chars)
    from bpe import BPETokenizer  # needs the regex package, so only when asked for
    return BPETokenizer.load(spec)


def write_csv(path, rows):
    """Rewrite the whole CSV atomically, so it always matches the checkpoint's history."""
    if not path or not rows:
        return
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def setup(args, device):
    """Model, tokenizer, optimizer and batches, fresh or from the checkpoint."""
    checkpoint = None
    if args.resume:
        checkpoint = load_checkpoint(args.ckpt)
        if checkpoint.get("optimizer") is None:
            raise UserError(f"{args.ckpt} holds no optimizer state, so it cannot be resumed")
        for name in RESUMED_FLAGS:
            setattr(args, name, checkpoint["train_args"].get(name, getattr(args, name)))
        tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
        if args.tokenizer and args.tokenizer != "char":
            from bpe import BPETokenizer
            if BPETokenizer.load(args.tokenizer).to_dict() != checkpoint["tokenizer"]:
                raise UserError(f"{args.tokenizer} does not match the tokenizer inside {args.ckpt}; "
                                f"resume without --tokenizer to use the checkpoint's")
        elif args.tokenizer == "char" and tokenizer.kind != "char":
            raise UserError(f"{args.ckpt} was trained with a {tokenizer.kind} tokenizer, not 'char'")
    elif os.path.exists(args.ckpt) and not args.overwrite:
        raise UserError(f"{args.ckpt} already exists: pass --resume to continue it, --overwrite to replace it, "
                        f"or --ckpt to train into another file")
    else:
        tokenizer = load_tokenizer(args.tokenizer or "char", args.data)

    tokens, n_chars = tokenize_to_memmap(args.data, tokenizer)
    if len(tokens) == 0:
        raise UserError(f"data file {args.data} is empty: give it some text to learn from")
    batches = Batches(tokens, args.block_size, args.val_fraction, args.seed)
    # bits per character = nats per token / ln 2 * tokens per character
    val_chars = n_chars * len(batches.val) / len(tokens)
    tokens_per_char = len(batches.val) / val_chars if val_chars else len(tokens) / n_chars

    torch.manual_seed(args.seed)
    if args.model == "transformer":
        config = dict(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                      n_head=args.n_head, n_embd=args.n_embd, dropout=args.dropout, bias=args.bias,
                      attention=attention_for(device, args.attention))
    else:
        config = dict(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                      n_embd=args.n_embd, cell=args.rnn_cell, dropout=args.dropout)
    model = build_model(args.model, config)
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    optimizer = build_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                betas=(0.9, args.beta2), muon_lr=args.muon_lr)
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        batches.generator.set_state(checkpoint["rng"]["batches"])
    return model, tokenizer, optimizer, batches, tokens_per_char, checkpoint


def train(args):
    device = choose_device(args.device)
    flush_denormals()
    procs, device = init_processes(device)
    try:
        return run_training(args, procs, device)
    finally:
        shutdown(procs)


def run_training(args, procs, device):
    """The training loop; under torchrun every process runs it, rank 0 also evaluates and saves."""
    model, tokenizer, optimizer, batches, tokens_per_char, resumed = setup(args, device)
    if args.grad_accum % procs.world_size:
        raise UserError(f"--grad-accum {args.grad_accum} must be a multiple of the {procs.world_size} processes")
    local_micro_steps = args.grad_accum // procs.world_size
    step = resumed["step"] if resumed else 0
    history = list(resumed.get("history", [])) if resumed else []
    best_val = resumed.get("best_val_loss") if resumed else None
    elapsed_before = resumed.get("elapsed_s", 0.0) if resumed else 0.0
    decay_iters = args.lr_decay_iters or args.max_iters
    dtype = autocast_dtype(device, args.dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)  # float16 gradients underflow
    # rank 0 prints and saves; the others only train
    say = tqdm.write if procs.is_main else (lambda *a, **k: None)
    say(f"{args.model}: {count_parameters(model) / 1e6:.2f}M parameters, {tokenizer.kind} tokenizer "
        f"({tokenizer.vocab_size} tokens), {len(batches.train):,} train / {len(batches.val):,} val tokens, "
        f"device {device}" + (f", {procs.world_size} processes" if procs.enabled else "")
        + (f", autocast {str(dtype).replace('torch.', '')}" if dtype else "")
        + (f", resuming at step {step}" if resumed else ""))
    forward = model  # what the training step calls: the model, maybe compiled, maybe wrapped in DDP
    if args.compile:
        forward = maybe_compile(model, batches.train_batches(1, 1, peek=True)[0][0].to(device))
    if procs.enabled:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)

    def bpc(loss):
        return loss / math.log(2) * tokens_per_char

    def snapshot():
        return {"format_version": FORMAT_VERSION, "model_type": args.model, "model_config": config_dict(model),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "tokenizer": tokenizer.to_dict(), "train_args": vars(args), "step": step,
                "best_val_loss": best_val, "elapsed_s": elapsed_before + (time.time() - start),
                "rng": {"torch": torch.get_rng_state(), "batches": batches.generator.get_state()},
                "history": history, "chat": resumed.get("chat", False) if resumed else False}

    def record(train_loss, max_tokens, tokens_per_s):
        nonlocal best_val
        with autocast(device, dtype):
            val = evaluate(model, batches, args.batch_size, device, max_tokens)
        best_val = val if best_val is None or val < best_val else best_val
        history.append({"step": step, "elapsed_s": round(elapsed_before + time.time() - start, 2),
                        "train_loss": round(train_loss, 4), "val_loss": round(val, 4),
                        "val_ppl": round(math.exp(val), 3), "val_bpc": round(bpc(val), 4),
                        "lr": args.lr * multiplier, "tokens_per_s": round(tokens_per_s)})
        utilization = mfu(tokens_per_s, flops_per_token, peak_flops(device) * procs.world_size)
        tqdm.write(f"step {step}: train loss {train_loss:.4f}, val loss {val:.4f}, "
                   f"val ppl {math.exp(val):.2f}, val bits/char {bpc(val):.4f}, "
                   f"{tokens_per_s:,.0f} tokens/s, MFU {utilization:.0%}")
        write_csv(args.metrics, history)
        return val

    model.train()
    start = time.time()
    tokens_per_step = args.batch_size * args.grad_accum * args.block_size  # over all processes
    flops_per_token = model_flops_per_token(model)
    multiplier = 0.0
    recent_loss, tokens_per_s = float("nan"), 0.0  # smoothed, for the progress bar
    interval_losses = []  # every step's loss since the last evaluation, for the train-loss column
    progress = tqdm(total=args.max_iters, initial=step, desc="training", dynamic_ncols=True, file=sys.stderr,
                    disable=not procs.is_main)
    try:
        while step < args.max_iters:
            t0 = time.time()
            multiplier = lr_multiplier(step, args.warmup_iters, decay_iters, args.min_lr_ratio)
            set_lr_multiplier(optimizer, multiplier)
            # Every process draws the same global set of blocks and trains on its own share,
            # so N processes take exactly the step one process takes with the whole batch.
            micro_batches = batches.train_batches(args.batch_size, args.grad_accum)
            mine = micro_batches[procs.rank * local_micro_steps: (procs.rank + 1) * local_micro_steps]
            losses = []
            for i, (x, y) in enumerate(mine):
                last = i == len(mine) - 1
                # DDP averages gradients across processes after a backward; skip it until the last micro-batch
                sync = contextlib.nullcontext() if last or not procs.enabled else forward.no_sync()
                with sync:
                    with autocast(device, dtype):
                        _, loss = forward(x.to(device), y.to(device))
                    scaler.scale(loss / len(mine)).backward()
                losses.append(loss.item())
            out_of_time = bool(args.time_limit) and time.time() - start >= args.time_limit
            loss_value, out_of_time = mean_across(procs, [mean(losses), float(out_of_time)], device)
            if not math.isfinite(loss_value):
                raise UserError(f"the loss became {loss_value} at step {step}; stopped without saving, so "
                                f"{args.ckpt} keeps its last good state. Try a lower --lr")
            if args.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            interval_losses.append(loss_value)
            recent_loss = loss_value if math.isnan(recent_loss) else 0.9 * recent_loss + 0.1 * loss_value
            step_tokens_per_s = tokens_per_second(tokens_per_step, time.time() - t0)
            tokens_per_s = step_tokens_per_s if not tokens_per_s else 0.9 * tokens_per_s + 0.1 * step_tokens_per_s
            progress.update(1)
            progress.set_postfix(loss=f"{recent_loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            if out_of_time:
                say(f"time limit of {args.time_limit:g} s reached at step {step}")
                break
            if step % args.eval_interval == 0 and step < args.max_iters:
                if procs.is_main:
                    record(mean(interval_losses), args.eval_tokens, tokens_per_s)
                    save_checkpoint(args.ckpt, snapshot())
                interval_losses.clear()
    except KeyboardInterrupt:
        progress.close()
        if procs.is_main:
            save_checkpoint(args.ckpt, snapshot())
            print(f"\ninterrupted at step {step}: saved {args.ckpt}; continue with --resume", file=sys.stderr)
        sys.exit(130)
    progress.close()

    identical = replicas_identical(procs, model)
    if not procs.is_main:
        return None
    if procs.enabled:
        print(f"parameters identical on all {procs.world_size} processes: {'yes' if identical else 'NO'}")
    val = record(mean(interval_losses), args.final_eval_tokens, tokens_per_s)
    save_checkpoint(args.ckpt, snapshot())
    plot_history(args.plot, history)
    elapsed = elapsed_before + time.time() - start
    print(f"saved {args.ckpt}" + (f", {args.metrics}" if args.metrics else "") + (f", {args.plot}" if args.plot else ""))
    print(f"final: step={step} val_loss={val:.4f} val_ppl={math.exp(val):.3f} val_bpc={bpc(val):.4f} "
          f"elapsed_s={elapsed:.1f}")
    return {"step": step, "val_loss": val, "val_bpc": bpc(val), "elapsed_s": elapsed}


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)

"""b_lm's default run against nanoGPT's README CPU recipe, at equal wall time, on one machine.

    python nanogpt_benchmark.py --nanogpt ~/src/nanoGPT                 # runs both (2 x 5 minutes, or more)
    python nanogpt_benchmark.py --nanogpt ~/src/nanoGPT --ours checkpoint.pth --ours-seconds 479

It clones nothing: give it a checkout of github.com/karpathy/nanoGPT. b_lm runs `python train.py` as the quick start
does (or --ours gives that run's checkpoint and training seconds). nanoGPT gets b_lm's corpus and split as its char
dataset, a short run to time its iterations with their evals, then the README's CPU recipe (RECIPE) with --max_iters
(and --lr_decay_iters) set so that its training takes b_lm's training time; a run whose training misses that time by
more than 5% (a long run's iterations keep their own pace) is run again with the iterations that pace says fit, at most
twice. Both are scored alike: the mean nats per character over the whole validation split, in non-overlapping windows
of each model's context, nanoGPT from its best checkpoint (it saves when its val loss improves). Run it with nothing
else busy: both runs are timed.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import importlib.util
import os
import pickle
import re
import shutil
import statistics
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from checkpoint import load_model
from errors import ArgumentParser, UserError, run_main
from files import check_input_file, read_text
from timing import run_timed

WEEK = 7 * 24 * 3600  # --ours-seconds beyond this is a typo: nanoGPT would train for it
TOLERANCE = 0.05  # nanoGPT's training time may differ from b_lm's by this fraction
MAX_RERUNS = 2  # runs of nanoGPT after the first, each with the iterations the last one's pace says fit

ROOT = os.path.dirname(os.path.abspath(__file__))
RECIPE = ["--device=cpu", "--compile=False", "--eval_interval=250", "--eval_iters=20", "--log_interval=1",
          "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]


def parse_args(argv=None):
    p = ArgumentParser(description="b_lm's default run against nanoGPT's CPU recipe at equal wall time.")
    p.add_argument("--nanogpt", required=True, help="a checkout of karpathy/nanoGPT (its train.py and model.py)")
    p.add_argument("--data", default=os.path.join(ROOT, "data.txt"), help="corpus (default: data.txt)")
    p.add_argument("--ours", default=None, metavar="CKPT",
                   help="score this checkpoint of the default run instead of training one (needs --ours-seconds)")
    p.add_argument("--ours-seconds", type=float, default=None, help="the training seconds of --ours")
    p.add_argument("--work", default=None,
                   help="a new or empty folder for the runs' files (default: a new temporary folder)")
    args = p.parse_args(argv)
    for name in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
        if not os.path.isfile(os.path.join(args.nanogpt, name)):
            raise UserError(f"{args.nanogpt} is not a nanoGPT checkout: it has no {name}")
    check_input_file(args.data, "data file")
    args.nanogpt = os.path.abspath(args.nanogpt)  # nanoGPT runs in --work, so a relative path would miss
    if (args.ours is None) != (args.ours_seconds is None):
        raise UserError("--ours and --ours-seconds go together")
    if args.ours_seconds is not None and not 0 < args.ours_seconds <= WEEK:
        raise UserError(f"--ours-seconds must be > 0 and at most a week ({WEEK} s), got {args.ours_seconds}")
    if args.work is not None and os.path.exists(args.work) and not os.path.isdir(args.work):
        raise UserError(f"--work {args.work} is a file: name a folder for the runs' files")
    if args.work is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.work))):
        raise UserError(f"--work {args.work}: folder {os.path.dirname(os.path.abspath(args.work))} does not exist")
    # The runs write data/, configurator.py and ours.pth there and clear out/ and timing/: never in a folder that
    # holds anything else (a nanoGPT checkout's own out/ would be lost).
    if args.work is not None and os.path.isdir(args.work) and os.listdir(args.work):
        raise UserError(f"--work {args.work} is not empty: name a new or empty folder for the runs' files")
    if args.ours is not None:
        check_input_file(args.ours, "checkpoint")
    return args


def val_nats_per_char(logits_of, val, block_size):
    """Mean nats over every target of val (a 1-D id tensor) in non-overlapping windows of block_size."""
    nats, starts = 0.0, range(0, len(val) - block_size, block_size)
    if not starts:
        raise UserError(f"the validation split ({len(val)} characters) is shorter than a context of {block_size}: "
                        f"give a longer --data")
    with torch.no_grad():
        for i in range(0, len(starts), 64):
            rows = torch.stack([val[s:s + block_size + 1] for s in starts[i:i + 64]])  # each window, one token longer
            logits = logits_of(rows[:, :-1])
            nats += F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum").item()
    return nats / (len(starts) * block_size)


def prepare_nanogpt_data(text, folder):
    """nanoGPT's char dataset (train.bin, val.bin, meta.pkl) with b_lm's split; returns val's ids."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    n_val = int(len(ids) * 0.1)  # data.py's split: the last 10% of the stream
    os.makedirs(folder, exist_ok=True)
    ids[:-n_val].tofile(os.path.join(folder, "train.bin"))
    ids[-n_val:].tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return torch.from_numpy(ids[-n_val:].astype(np.int64))


def corrected_iterations(iters, seconds, target):
    """None when a run of iters iterations trained for seconds within TOLERANCE of the target seconds; else the
    iterations that fit the target at that run's own pace."""
    return None if abs(seconds - target) <= TOLERANCE * target else max(1, round(iters * target / seconds))


def run_nanogpt(args, work, out_dir, iters):
    """Run nanoGPT's recipe for iters steps in work, saving into out_dir: (wall seconds, its iteration times in ms)."""
    shutil.rmtree(out_dir, ignore_errors=True)  # an earlier run's ckpt.pt must not pass for this run's
    command = [sys.executable, os.path.join(args.nanogpt, "train.py"),
               os.path.join(args.nanogpt, "config/train_shakespeare_char.py"), *RECIPE, "--dataset=iliad_char",
               f"--out_dir={out_dir}", f"--max_iters={iters}", f"--lr_decay_iters={iters}"]
    # nanoGPT reads configurator.py and data/ from its working directory: run it in ours, with a copy.
    shutil.copy(os.path.join(args.nanogpt, "configurator.py"), work)
    seconds, done = run_timed(command, "nanoGPT", cwd=work)
    times = [float(ms) for ms in re.findall(r"^iter \d+: .*time ([\d.]+)ms", done.stdout, re.M)]
    if not times:
        raise UserError(f"cannot read nanoGPT's iteration times from its log: is {args.nanogpt} karpathy/nanoGPT?")
    return seconds, times


def score_nanogpt(args, out_dir, val):
    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(args.nanogpt, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):  # nanoGPT saves from its first evaluation after iteration 0 on
        raise UserError("nanoGPT saved no checkpoint: b_lm's training time gave it too few iterations to "
                        "reach its first evaluation")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()})
    model.eval()
    # nanoGPT returns every position's logits only when given targets; the loss it returns is unused.
    logits_of = lambda x: model(x, torch.zeros_like(x))[0]  # noqa: E731
    return val_nats_per_char(logits_of, val, model.config.block_size), checkpoint["iter_num"]


def main(argv=None):
    args = parse_args(argv)
    made_here = args.work is None or not os.path.exists(args.work)
    work = args.work or tempfile.mkdtemp(prefix="nanogpt-benchmark-")
    os.makedirs(work, exist_ok=True)
    # A finished benchmark keeps its folder (b_lm's ours.pth, nanoGPT's out/ckpt.pt): say where, before the long runs.
    print(f"the runs' files go to {work}", flush=True)
    try:
        compare(args, work)
    except BaseException:  # a failed or stopped benchmark leaves nothing behind: its folder was new or empty
        for name in os.listdir(work):
            path = os.path.join(work, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        if made_here:
            os.rmdir(work)
        raise


def compare(args, work):
    """Train (or take) b_lm's run, time and run nanoGPT's recipe for the same time in work, score both."""
    text = read_text(args.data, "data file")
    val = prepare_nanogpt_data(text, os.path.join(work, "data", "iliad_char"))

    if args.ours is None:
        args.ours = os.path.join(work, "ours.pth")
        print("training b_lm's default model ...", flush=True)
        run_timed([sys.executable, os.path.join(ROOT, "train.py"), "--data", args.data, "--ckpt", args.ours,
                   "--metrics", "", "--plot", "", "--overwrite"], "b_lm's training")
    model, tokenizer, checkpoint = load_model(args.ours)
    ours_seconds = args.ours_seconds or checkpoint["elapsed_s"]
    if tokenizer.kind != "char":
        raise UserError(f"{args.ours} uses a {tokenizer.kind} tokenizer: this benchmark compares character models")
    model.eval()
    our_val = torch.tensor(tokenizer.encode(text[-len(val):]))
    ours = val_nats_per_char(lambda x: model(x)[0], our_val, model.config.block_size)

    print("timing nanoGPT's iterations ...", flush=True)
    # nanoGPT times each iteration from the end of the one before, so an iteration that evaluates carries the eval:
    # the mean past the warm-up, in a run that evaluates as the real one does (RECIPE's every 250), is its cost per
    # iteration with its evals, as b_lm's training time has its own.
    _, times = run_nanogpt(args, work, os.path.join(work, "timing"), 500)
    per_iter = statistics.mean(times[20:] or times) / 1000
    iters = round(ours_seconds / per_iter)
    print(f"nanoGPT: {per_iter * 1000:.1f} ms per iteration with its evals, so {iters} iterations in "
          f"{ours_seconds:.0f} s; training ...", flush=True)
    out_dir = os.path.join(work, "out")
    # A long run's steady-state iterations run at their own pace (slower than the timing run's here): when the
    # training missed b_lm's time by more than 5%, run again with the iterations its own pace says fit.
    for run in range(1 + MAX_RERUNS):
        wall, times = run_nanogpt(args, work, out_dir, iters)
        trained = sum(times) / 1000
        again = corrected_iterations(iters, trained, ours_seconds)
        if again is None or run == MAX_RERUNS:
            break
        print(f"nanoGPT: {iters} iterations took {trained:.0f} s, not {ours_seconds:.0f} s: again with {again} ...",
              flush=True)
        iters = again
    theirs, best_iter = score_nanogpt(args, out_dir, val)

    print("\n| run | iterations | training time | val loss (nats/char) |\n|---|---|---|---|")
    print(f"| b_lm default `python train.py` | {checkpoint['step']} | {ours_seconds:.0f} s | {ours:.4f} |")
    print(f"| nanoGPT CPU recipe, same training time (best checkpoint: iteration {best_iter}) | {iters} | "
          f"{trained:.0f} s ({wall:.0f} s with start-up) | {theirs:.4f} |")
    print(f"\nb_lm leads by {theirs - ours:.3f} nats/char")
    if again is not None:
        print(f"(nanoGPT's training time still missed b_lm's by more than {TOLERANCE:.0%} after {MAX_RERUNS} more "
              f"runs: its pace changed from run to run; measure again with nothing else busy)")


if __name__ == "__main__":
    run_main(main)

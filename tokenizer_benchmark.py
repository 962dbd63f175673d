"""Our BPE side by side with Hugging Face `tokenizers` (training) and tiktoken (encoding).

    python tokenizer_benchmark.py            # training time and encoding speed
    python tokenizer_benchmark.py --scale    # and training on 1x, 4x, 16x the corpus

Run by hand; needs the dev requirements (tokenizers, tiktoken). Times are the best of --repeat runs, since other
work on the machine only ever adds time.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import os
import tempfile

import bpe
from data import iter_text_blocks
from errors import ArgumentParser, UserError, run_main
from timing import best_seconds, run_measured
from tokenizer import SPECIAL_TOKENS

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = ArgumentParser(description="Benchmark bpe.py against Hugging Face tokenizers and tiktoken.")
    p.add_argument("--data", default="data.txt", help="corpus to train and encode on (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=4096,
                   help="vocabulary size, special tokens included (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="time each measurement this many times and keep the best (default: %(default)s)")
    p.add_argument("--scale", action="store_true", help="also train on the corpus repeated 1, 4 and 16 times, each in "
                   "its own process, reporting time and peak memory (default: off)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {args.repeat}")
    bpe.merges_for_vocab_size(args.vocab_size)  # a size too small is refused before any work
    return args


def train_hf(path, vocab_size):
    """HF's BpeTrainer set up like ours: the same regex split, then bytes."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(bpe.GPT4_PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([path], trainer)
    return tok


def scale_table(path, vocab_size):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    print(f"\ntraining at scale (train_tokenizer.main, one fresh process each, vocab {vocab_size})")
    print(f"{'corpus':>8} {'MB':>7} {'time s':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (1, 4, 16):
            corpus = os.path.join(tmp, f"x{k}.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write(text * k)
            seconds, peak = run_measured(os.path.join(HERE, "train_tokenizer.py"), "--data", corpus,
                                         "--vocab-size", str(vocab_size), "--out", os.path.join(tmp, f"x{k}.json"))
            print(f"{f'{k}x':>8} {os.path.getsize(corpus) / 1e6:7.1f} {seconds:8.2f} {peak:12.1f}")
    print("(the copies add no new distinct chunks, so memory should stay flat: it grows "
          "with distinct chunks, not with the file)")


def main(argv=None):
    args = parse_args(argv)
    text = "".join(iter_text_blocks(args.data))  # a missing, folder or non-UTF-8 --data is one clear line
    mb = len(text.encode("utf-8")) / 1e6
    print(f"{args.data}: {mb:.2f} MB, vocab {args.vocab_size}, best of {args.repeat}, {os.cpu_count()} CPUs")

    ours_s, tok = best_seconds(lambda: bpe.train_bpe(bpe.count_file_chunks(args.data), args.vocab_size), args.repeat)
    hf_s, _ = best_seconds(lambda: train_hf(args.data, args.vocab_size), args.repeat)
    print("\ntraining (read file, split, count, merge)")
    print(f"{'':18} {'seconds':>8} {'vs HF':>7}")
    print(f"{'ours (bpe.py)':18} {ours_s:8.3f} {ours_s / hf_s:6.2f}x")
    print(f"{'HF tokenizers':18} {hf_s:8.3f} {1:6.2f}x")

    import tiktoken
    enc = tiktoken.Encoding(name="b_lm_bpe", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(),
                            special_tokens=tok.special_tokens)
    # cold: a fresh tokenizer whose chunk cache is empty; warm: a second pass
    cold_s, ids = best_seconds(lambda: bpe.BPETokenizer(tok.merges, tok.pattern).encode(text), args.repeat)
    warm_s, _ = best_seconds(lambda: tok.encode(text), args.repeat + 1)
    tt_s, tt_ids = best_seconds(lambda: enc.encode_ordinary(text), args.repeat)
    print(f"\nencoding {args.data} ({len(ids):,} tokens, identical to tiktoken's: {ids == tt_ids})")
    print(f"{'':18} {'MB/s':>8} {'vs tiktoken':>12}")
    for name, s in [("ours, cold cache", cold_s), ("ours, warm cache", warm_s), ("tiktoken", tt_s)]:
        print(f"{name:18} {mb / s:8.2f} {tt_s / s:11.2f}x")

    if args.scale:
        scale_table(args.data, args.vocab_size)


if __name__ == "__main__":
    run_main(main)

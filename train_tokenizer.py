"""Train a byte-level BPE tokenizer on a text file and save it as JSON; a corpus larger than memory works.

    python train_tokenizer.py --data data.txt --vocab-size 4096 --out tokenizer.json
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import time

import bpe
from errors import ArgumentParser, UserError, run_main
from files import check_input_file, check_output_path, claimed, refuse_existing


class TenthsPrinter:
    """A progress callback: prints 'label 40% (done/total)' at each tenth done (to stdout: stderr holds only errors)."""

    def __init__(self, label):
        self.label, self.shown = label, -1

    def __call__(self, done, total):
        tenth = 10 * done // max(total, 1)
        if tenth > self.shown:
            self.shown = tenth
            print(f"{self.label} {10 * tenth:3d}% ({done:,}/{total:,})", flush=True)


def main(argv=None):
    p = ArgumentParser(description="Train a byte-level BPE tokenizer (see bpe.py) on a UTF-8 text file.")
    a = p.add_argument
    a("--data", default="data.txt", help="the training corpus, a UTF-8 text file (default: %(default)s)")
    a("--vocab-size", type=int, default=4096, help=f"total vocabulary size, counting the 256 byte tokens and the "
      f"{bpe.N_SPECIAL} special tokens: it learns vocab-size - {256 + bpe.N_SPECIAL} merges (default: %(default)s)")
    a("--out", default="tokenizer.json", help="where to write the tokenizer, as JSON (default: %(default)s)")
    a("--overwrite", action="store_true", help="replace --out if it exists")
    a("--pattern", default=bpe.GPT4_PATTERN, help="regex (Python 'regex' package syntax) that splits text into "
      "the chunks that merges never cross (default: GPT-4's, bpe.GPT4_PATTERN)")
    a("--block-mb", type=float, default=1.0,
      help="read the corpus this many megabytes at a time; peak memory grows with it (default: 1)")
    args = p.parse_args(argv)
    n_merges = bpe.merges_for_vocab_size(args.vocab_size)  # fail before reading a big file
    if not 0 < args.block_mb <= 1024:
        raise UserError(f"--block-mb must be in (0, 1024], got {args.block_mb}")
    check_input_file(args.data, "--data")
    check_output_path(args.out, "--out", [args.data])
    refuse_existing(args.out, "--out", args.overwrite)
    with claimed(args.out, "--out"):
        t0 = time.perf_counter()
        counts = bpe.count_file_chunks(args.data, args.pattern, max(1, int(args.block_mb * 2**20)),
                                       progress=TenthsPrinter("reading bytes"))
        if not counts:
            raise UserError(f"{args.data} is empty: give a corpus with at least a few words of text")
        print(f"{sum(counts.values()):,} chunks, {len(counts):,} distinct, in {time.perf_counter() - t0:.2f}s",
              flush=True)
        tok = bpe.train_bpe(counts, args.vocab_size, args.pattern, progress=TenthsPrinter("merges"))
        if len(tok.merges) < n_merges:
            print(f"note: the corpus ran out of pairs at {len(tok.merges):,} merges: a smaller vocabulary than asked")
        tok.save(args.out)
        print(f"vocab size {tok.vocab_size} (256 bytes + {len(tok.merges)} merges + {bpe.N_SPECIAL} special), trained "
              f"in {time.perf_counter() - t0:.2f}s, saved to {args.out}")


if __name__ == "__main__":
    run_main(main)

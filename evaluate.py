"""Evaluate a checkpoint: validation loss, Q&A exact match and F1, and scores of sampled text, as a table and JSON.

    python evaluate.py --ckpt chat.pth                   # writes eval_report.json
    python evaluate.py --ckpt checkpoint.pth --report base_report.json

Three groups of numbers, printed as a table and written to --report as JSON:
  text     loss, perplexity and bits per character on the validation split train.py holds out.
  qa       exact match and token F1 (as SQuAD scores them) of greedy answers to one split of --qa, asked in the
           chat format, so a base model and its fine-tuned chat model answer the same prompts.
  samples  distinct-1/2, repeated word 4-grams and the share of words found in the corpus, of --samples texts
           sampled from "Sing, " (the corpus's first words) and, for reference, of corpus passages as long.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import contextlib
import json
import math
import time

from chat import prompt_budget
from checkpoint import load_model, training_data_path
from data import corpus_batches, iter_text_blocks
from device import choose_device
from errors import ArgumentParser, UserError, run_main
from files import atomic_write, check_output_path, claimed, refuse_existing
from flags import add_flag, check_seed, ckpt_setting, device_setting, seed_setting
from qa import SPLITS, load_qa
from sampling import Sampling, text_prompt
from scores import SAMPLE_PROMPT, qa_scores, sample_scores
from validation import evaluate_loss

EVAL_BATCH_SIZE = 32
MAX_TOKENS = 100_000


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flag(p, "ckpt", ckpt_setting("checkpoint.pth", "checkpoint to evaluate"))
    a = p.add_argument
    a("--qa", default="qa.jsonl", help="question/answer JSONL in make_qa.py's schema (default: %(default)s)")
    a("--split", default="test", choices=SPLITS, help="which questions of --qa to ask (default: %(default)s)")
    a("--data", default=None,
      help="corpus for the validation loss and the vocabulary (default: the file the checkpoint was trained on)")
    a("--report", default="eval_report.json", help="JSON report to write; '' skips it (default: %(default)s)")
    a("--overwrite", action="store_true", help="replace --report if it exists")
    a("--max-answer-tokens", type=int, default=48,
      help="longest answer generated, 1 to 100,000; a model that never says <|end|> stops here (default: %(default)s)")
    a("--samples", type=int, default=5,
      help="texts to sample for the text scores, 0 to 1000; 0 skips them (default: %(default)s)")
    a("--sample-length", type=int, default=300, help="tokens per sample, 1 to 100,000 (default: %(default)s)")
    a("--temp", "--temperature", dest="temp", type=float, default=0.8,
      help="sampling temperature of the samples, >= 0; answers are always greedy (default: %(default)s)")
    add_flag(p, "seed", seed_setting(1337, "seed of the first sample; the i-th uses seed + i"), int)
    add_flag(p, "device", device_setting())
    args = p.parse_args(argv)
    if args.data == "":
        raise UserError("--data is empty: name the corpus, or leave the flag out for the checkpoint's own")
    if not (0 < args.max_answer_tokens <= MAX_TOKENS and 0 < args.sample_length <= MAX_TOKENS):
        raise UserError(f"--max-answer-tokens and --sample-length must be in [1, {MAX_TOKENS:,}]: each answer "
                        f"and sample is generated whole before it is scored")
    if not 0 <= args.samples <= 1000 or not 0 <= args.temp < math.inf:
        raise UserError("--samples must be in [0, 1000] and --temp a number >= 0")
    check_seed(args.seed, following=args.samples)
    return args


def run_evaluation(args):
    records = load_qa(args.qa, args.split)  # bad files fail here, before the slow parts
    if not records:
        raise UserError(f"{args.qa} has no {args.split} questions")
    model, tokenizer, checkpoint = load_model(args.ckpt, choose_device(args.device))
    # Before the slow parts: qa_scores scores a question the model cannot read as unanswered, so a context too short
    # to chat would otherwise pass as a vocabulary problem.
    prompt_budget(model.config.block_size, args.max_answer_tokens)
    if args.samples:
        try:
            text_prompt(tokenizer, SAMPLE_PROMPT, Sampling())
        except UserError as e:
            raise UserError(f"the samples start from {SAMPLE_PROMPT!r}, which {args.ckpt} cannot read ({e}): "
                            f"--samples 0 skips them") from None
    data = training_data_path(checkpoint, args.data)
    if args.report:
        check_output_path(args.report, "--report", [data])
    val_fraction = checkpoint["run_config"].get("val_fraction", 0.1)
    report = {"checkpoint": args.ckpt, "chat": bool(checkpoint.get("chat", False)), "data": data,
              "qa_file": args.qa, "split": args.split, "elapsed_s": {}}

    t0 = time.time()
    batches = corpus_batches(data, tokenizer, model.config.block_size, val_fraction, seed=0)  # train.py's val split
    report["text"] = {**evaluate_loss(model, batches, EVAL_BATCH_SIZE, tokenizer.token_chars()),
                      "val_tokens": len(batches.val)}
    t1 = time.time()
    report["qa"] = qa_scores(model, tokenizer, records, args.max_answer_tokens)
    t2 = time.time()
    if args.samples:
        report["samples"] = sample_scores(model, tokenizer, "".join(iter_text_blocks(data)), args.samples,
                                          Sampling(args.sample_length, temperature=args.temp, seed=args.seed))
    t3 = time.time()
    report["elapsed_s"] = {"text": round(t1 - t0, 2), "qa": round(t2 - t1, 2), "samples": round(t3 - t2, 2),
                           "total": round(t3 - t0, 2)}
    return report


def format_table(report):
    def num(x, fmt):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    text, qa = report["text"], report["qa"]
    kind = "chat model" if report["chat"] else "base model, asked in the chat format"
    lines = [f"{report['checkpoint']} ({kind}); corpus {report['data']}, questions {report['qa_file']} "
             f"({report['split']} split)",
             f"  val loss             {num(text['val_loss'], '.4f')} nats/token",
             f"  val perplexity       {num(text['val_ppl'], '.3f')}",
             f"  val bits/char        {num(text['val_bpc'], '.4f')}",
             f"  Q&A exact match      {num(qa['exact_match'], '.1%')}  "
             f"({round(qa['exact_match'] * qa['n'])} of {qa['n']})",
             f"  Q&A token F1         {num(qa['f1'], '.1%')}"]
    if qa["unencodable"]:
        lines.append(f"  ({qa['unencodable']} questions have characters the model's vocabulary lacks: "
                     f"scored as unanswered)")
    if samples := report.get("samples"):
        ref = samples["reference"]
        lines += [f"  distinct-{n}           {num(samples[f'distinct_{n}'], '.3f')}   "
                  f"(corpus {num(ref[f'distinct_{n}'], '.3f')})" for n in (1, 2)]
        lines += [f"  repeated 4-grams     {num(samples['repetition_4gram'], '.1%')}    "
                  f"(corpus {num(ref['repetition_4gram'], '.1%')})",
                  f"  words in corpus      {num(samples['vocab_share'], '.1%')}"]
    by_cat = ", ".join(f"{c} {num(s['exact_match'], '.0%')}" for c, s in qa["by_category"].items())
    lines.append(f"  exact match by category: {by_cat}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.report:  # checked before it is claimed, so a bad path leaves no lock behind
        check_output_path(args.report, "--report", [args.qa, args.ckpt, args.data])
        refuse_existing(args.report, "--report", args.overwrite)
    with claimed(args.report, "--report") if args.report else contextlib.nullcontext():
        report = run_evaluation(args)
        print(format_table(report))
        if args.report:
            # NaN (a score of nothing, e.g. no words sampled) as null: JSON has no NaN
            ready = json.loads(json.dumps(report), parse_constant=lambda _: None)
            with atomic_write(args.report, "w", encoding="utf-8") as f:
                json.dump(ready, f, ensure_ascii=False, indent=1)
                f.write("\n")
            print(f"wrote {args.report}")
    print(f"elapsed_s={report['elapsed_s']['total']:.1f}")
    return report


if __name__ == "__main__":
    run_main(main)

"""Evaluate a checkpoint: corpus loss, question answering, and the quality of sampled text.

    python evaluate.py --ckpt chat.pth                   # writes eval_report.json
    python evaluate.py --ckpt checkpoint.pth --report base_report.json

Three groups of numbers, printed as a table and written to --report as JSON:

  text     loss, perplexity and bits per character on the corpus's validation
           split, the same split train.py holds out (its last val_fraction).
  qa       exact match and token F1 (as SQuAD scores them) of greedy answers
           to the questions of one split of --qa. Every checkpoint is asked in
           the chat format, so a base model and its fine-tuned chat model
           answer the same prompts.
  samples  --samples texts sampled from "Sing, " (the corpus's first words):
           distinct-1/2 (unique word uni-/bigrams over all of them), the
           repetition rate (share of word 4-grams that repeat one earlier in
           the same sample) and the share of their words that occur in the
           corpus. Passages of the corpus of the same lengths are scored the
           same way, for reference.
"""
import json
import math
import re
import sys
import time
import unicodedata
from collections import Counter

from tqdm import tqdm

from chat import answer
from checkpoint import load_model, training_data
from data import Batches, iter_text_blocks, tokenize_to_memmap
from device import DEVICE_CHOICES, choose_device
from errors import ArgumentParser, UserError, run_main
from files import atomic_write
from generate import stream_text
from make_qa import load_qa
from train import evaluate

SAMPLE_PROMPT = "Sing, "
EVAL_BATCH_SIZE = 32


# ------------------------------------------------------------- answer scores

def normalize_answer(s):
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces.

    'The Shield of Achilles!' -> 'shield of achilles'. Punctuation is any
    Unicode punctuation, so Butler's curly quotes and dashes go too.
    """
    s = "".join(ch for ch in s.lower() if not unicodedata.category(ch).startswith("P"))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction, gold):
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction, gold):
    """F1 of the normalized words the two share, counted with multiplicity (SQuAD's F1).

    ('son of Peleus', 'Peleus') -> precision 1/3, recall 1 -> 0.5.
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)  # both empty is a match; one empty scores nothing
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_scores(model, tokenizer, records, max_new_tokens, progress=True):
    """Greedy answers to every record's question, scored against its answer.

    A question with characters the model's vocabulary lacks is scored as
    unanswered and counted in 'unencodable'.
    """
    predictions, unencodable = [], 0
    for r in tqdm(records, desc="answering", dynamic_ncols=True, file=sys.stderr, disable=not progress):
        try:
            prediction = answer(model, tokenizer, r["question"], max_new_tokens=max_new_tokens)
        except UserError:  # characters a char vocabulary lacks: the model cannot even read it
            prediction, unencodable = "", unencodable + 1
        predictions.append({"id": r["id"], "category": r["category"], "question": r["question"],
                            "answer": r["answer"], "prediction": prediction,
                            "em": exact_match(prediction, r["answer"]), "f1": token_f1(prediction, r["answer"])})
    by_category = {}
    for p in predictions:
        by_category.setdefault(p["category"], []).append(p)
    return {"n": len(predictions), "unencodable": unencodable, "exact_match": average(p["em"] for p in predictions),
            "f1": average(p["f1"] for p in predictions),
            "by_category": {c: {"n": len(ps), "exact_match": average(p["em"] for p in ps),
                                "f1": average(p["f1"] for p in ps)} for c, ps in sorted(by_category.items())},
            "predictions": predictions}


def average(values):
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


# ---------------------------------------------------------- text and samples

def text_scores(model, tokenizer, data_path, val_fraction, device):
    """Validation loss, perplexity and bits per character on the split train.py holds out."""
    tokens, n_chars = tokenize_to_memmap(data_path, tokenizer)
    if len(tokens) == 0:
        raise UserError(f"data file {data_path} is empty")
    batches = Batches(tokens, model.config.block_size, val_fraction, seed=0)  # the seed only draws train blocks
    if len(batches.val) == 0:
        return {"val_loss": None, "val_ppl": None, "val_bpc": None, "val_tokens": 0}
    loss = evaluate(model, batches, EVAL_BATCH_SIZE, device)
    model.eval()  # train.evaluate hands the model back in training mode: dropout would make answers random
    tokens_per_char = len(tokens) / n_chars  # nats/token -> bits/char, comparable across tokenizers
    return {"val_loss": loss, "val_ppl": math.exp(loss), "val_bpc": loss / math.log(2) * tokens_per_char,
            "val_tokens": len(batches.val)}


def words(text):
    """Lower-case words, apostrophes inside kept: 'Achilles’ son—Thetis’s' -> ['achilles', 'son', 'thetis’s']."""
    return re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)*", text.lower())


def complete_words(text):
    """words(text), less a last word that the end of a sample may have cut short."""
    ws = words(text)
    return ws[:-1] if ws and text[-1:].isalpha() else ws


def ngrams(ws, n):
    return [tuple(ws[i: i + n]) for i in range(len(ws) - n + 1)]


def distinct_n(texts, n):
    """Unique word n-grams / all word n-grams, over all the texts together (Li et al., 2016)."""
    grams = [g for t in texts for g in ngrams(complete_words(t), n)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(texts, n=4):
    """Share of word n-grams that repeat an n-gram seen earlier in the same text.

    0 for text that never repeats itself; a model stuck in a loop nears 1.
    """
    repeats = total = 0
    for t in texts:
        seen = set()
        for g in ngrams(complete_words(t), n):
            repeats += g in seen
            seen.add(g)
            total += 1
    return repeats / total if total else float("nan")


def vocab_share(texts, vocabulary):
    """Share of the texts' words that occur in the vocabulary (a set of words(corpus))."""
    ws = [w for t in texts for w in complete_words(t)]
    return sum(w in vocabulary for w in ws) / len(ws) if ws else float("nan")


def corpus_passages(corpus, lengths):
    """One passage per length, spread evenly over the corpus, each starting at a line."""
    passages = []
    for i, length in enumerate(lengths):
        start = corpus.find("\n", len(corpus) * i // len(lengths)) + 1
        passages.append(corpus[start: start + length])
    return passages


def sample_scores(model, tokenizer, corpus, n, length, temp, seed):
    """Score n samples from SAMPLE_PROMPT (seeds seed, seed + 1, ...) and same-length corpus passages."""
    texts = ["".join(stream_text(model, tokenizer, SAMPLE_PROMPT, length, temp, seed=seed + i)) for i in range(n)]
    reference = corpus_passages(corpus, [len(t) for t in texts])
    vocabulary = set(words(corpus))

    def scores(ts):
        return {"distinct_1": distinct_n(ts, 1), "distinct_2": distinct_n(ts, 2),
                "repetition_4gram": repetition_rate(ts, 4), "vocab_share": vocab_share(ts, vocabulary)}

    return {"prompt": SAMPLE_PROMPT, "n": n, "length": length, "temp": temp, "seed": seed, **scores(texts),
            "reference": scores(reference), "texts": texts}


# ------------------------------------------------------------------- script

def parse_args(argv=None):
    p = ArgumentParser(description="Evaluate a checkpoint: validation loss, Q&A exact match and F1, and "
                                   "scores of sampled text. Prints a table and writes a JSON report.")
    a = p.add_argument
    a("--ckpt", "--checkpoint", dest="ckpt", default="checkpoint.pth", help="checkpoint to evaluate "
                                                                           "(default: %(default)s)")
    a("--qa", default="qa.jsonl", help="question/answer JSONL in make_qa.py's schema (default: %(default)s)")
    a("--split", default="test", choices=["train", "test"], help="which questions of --qa to ask "
                                                                 "(default: %(default)s)")
    a("--data", default=None, help="corpus for the validation loss and the vocabulary (default: the file the "
                                   "checkpoint was trained on)")
    a("--report", default="eval_report.json", help="JSON report to write; '' skips it (default: %(default)s)")
    a("--max-answer-tokens", type=int, default=48,
      help="longest answer generated; a model that never says <|end|> stops here (default: %(default)s)")
    a("--samples", type=int, default=5, help="texts to sample for the text scores; 0 skips them "
                                             "(default: %(default)s)")
    a("--sample-length", type=int, default=300, help="tokens per sample (default: %(default)s)")
    a("--temp", "--temperature", dest="temp", type=float, default=0.8,
      help="sampling temperature of the samples; answers are always greedy (default: %(default)s)")
    a("--seed", type=int, default=1337, help="seed of the first sample; the i-th uses seed + i "
                                             "(default: %(default)s)")
    a("--device", default="auto", choices=DEVICE_CHOICES, help="auto: cuda, mps, dml, then cpu "
                                                               "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.max_answer_tokens <= 0 or args.sample_length <= 0:
        raise UserError("--max-answer-tokens and --sample-length must be positive")
    if args.samples < 0 or args.temp < 0:
        raise UserError("--samples and --temp must be >= 0")
    return args


def run_evaluation(args):
    """All three groups of scores for args.ckpt, as the report's dict."""
    records = load_qa(args.qa, args.split)  # bad files fail here, before the slow parts
    if not records:
        raise UserError(f"{args.qa} has no {args.split} questions")
    device = choose_device(args.device)
    model, tokenizer, checkpoint = load_model(args.ckpt, device)
    data = training_data(checkpoint, args.data)
    val_fraction = (checkpoint.get("train_args") or {}).get("val_fraction", 0.1)
    report = {"checkpoint": args.ckpt, "chat": bool(checkpoint.get("chat", False)), "data": data,
              "qa_file": args.qa, "split": args.split, "elapsed_s": {}}

    t0 = time.time()
    report["text"] = text_scores(model, tokenizer, data, val_fraction, device)
    t1 = time.time()
    report["qa"] = qa_scores(model, tokenizer, records, args.max_answer_tokens)
    t2 = time.time()
    if args.samples:
        corpus = "".join(iter_text_blocks(data))
        report["samples"] = sample_scores(model, tokenizer, corpus, args.samples, args.sample_length, args.temp,
                                          args.seed)
    t3 = time.time()
    report["elapsed_s"] = {"text": round(t1 - t0, 2), "qa": round(t2 - t1, 2), "samples": round(t3 - t2, 2),
                           "total": round(t3 - t0, 2)}
    return report


def format_table(report):
    """The report's headline numbers as aligned lines of text."""
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
    samples = report.get("samples")
    if samples:
        ref = samples["reference"]
        lines += [f"  distinct-{n}           {num(samples[f'distinct_{n}'], '.3f')}   "
                  f"(corpus {num(ref[f'distinct_{n}'], '.3f')})" for n in (1, 2)]
        lines += [f"  repeated 4-grams     {num(samples['repetition_4gram'], '.1%')}    "
                  f"(corpus {num(ref['repetition_4gram'], '.1%')})",
                  f"  words in corpus      {num(samples['vocab_share'], '.1%')}"]
    by_cat = ", ".join(f"{c} {num(s['exact_match'], '.0%')}" for c, s in qa["by_category"].items())
    lines.append(f"  exact match by category: {by_cat}")
    return "\n".join(lines)


def json_ready(value):
    """The report with NaN (a score of nothing, e.g. no words sampled) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(path, report):
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(json_ready(report), f, ensure_ascii=False, indent=1)
        f.write("\n")


def main(argv=None):
    args = parse_args(argv)
    report = run_evaluation(args)
    print(format_table(report))
    if args.report:
        write_report(args.report, report)
        print(f"wrote {args.report}")
    print(f"elapsed_s={report['elapsed_s']['total']:.1f}")
    return report


if __name__ == "__main__":
    run_main(main)

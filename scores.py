"""Scores for evaluate.py: answers as SQuAD scores them (exact match and token F1 after normalizing), and sampled
text by distinct-n, repetition and the share of its words found in the corpus."""
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import replace
from statistics import fmean

from tqdm import tqdm

from chat import answer
from errors import UserError
from sampling import Sampling, stream_text, text_prompt

SAMPLE_PROMPT = "Sing, "


def squad_normalize(s):
    """SQuAD's normalization, punctuation being any Unicode one: 'The Shield of Achilles’!' -> 'shield of achilles'."""
    s = "".join(ch for ch in s.lower() if not unicodedata.category(ch).startswith("P"))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction, gold):
    return float(squad_normalize(prediction) == squad_normalize(gold))


def token_f1(prediction, gold):
    """SQuAD's F1 of the normalized words the two share: ('son of Peleus', 'Peleus') -> P 1/3, R 1 -> 0.5."""
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)  # both empty is a match; one empty scores nothing
    same = sum((Counter(pred) & Counter(ref)).values())
    return 2 * same / (len(pred) + len(ref))  # 2PR / (P + R), with precision same / len(pred), recall same / len(ref)


def qa_scores(model, tokenizer, records, max_new_tokens):
    """Greedy answers to every record's question, scored against its answer; a question with characters the model's
    vocabulary lacks is scored as unanswered and counted in 'unencodable'."""
    predictions, unencodable = [], 0
    settings = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    for r in tqdm(records, desc="answering", dynamic_ncols=True, file=sys.stderr):
        try:
            prediction = answer(model, tokenizer, r["question"], settings)
        except UserError:  # characters a char vocabulary lacks: the model cannot even read it
            prediction, unencodable = "", unencodable + 1
        predictions.append({"id": r["id"], "category": r["category"], "question": r["question"],
                            "answer": r["answer"], "prediction": prediction,
                            "em": exact_match(prediction, r["answer"]), "f1": token_f1(prediction, r["answer"])})
    categories = sorted({p["category"] for p in predictions})
    return {"n": len(predictions), "unencodable": unencodable, **_means(predictions),
            "by_category": {c: _means([p for p in predictions if p["category"] == c]) for c in categories},
            "predictions": predictions}


def _means(predictions):
    nan = float("nan")
    return {"n": len(predictions), "exact_match": fmean(p["em"] for p in predictions) if predictions else nan,
            "f1": fmean(p["f1"] for p in predictions) if predictions else nan}


def words(text):
    """Lower-case words, inner apostrophes kept: 'Achilles’ son—Thetis’s' -> ['achilles', 'son', 'thetis’s']."""
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
    """Share of word n-grams that repeat one earlier in the same text: a model stuck in a loop nears 1."""
    grams = [ngrams(complete_words(t), n) for t in texts]
    total = sum(map(len, grams))
    return sum(len(g) - len(set(g)) for g in grams) / total if total else float("nan")


def vocab_share(texts, vocabulary):
    """Share of the texts' words that occur in the vocabulary (a set of words(corpus))."""
    ws = [w for t in texts for w in complete_words(t)]
    return sum(w in vocabulary for w in ws) / len(ws) if ws else float("nan")


def sample_scores(model, tokenizer, corpus, n, settings):
    """Score n samples from SAMPLE_PROMPT (seeds settings.seed, + 1, ...) and same-length corpus passages."""
    texts = ["".join(stream_text(model, tokenizer, *text_prompt(tokenizer, SAMPLE_PROMPT, replace(settings, seed=s))))
             for s in range(settings.seed, settings.seed + n)]
    starts = [corpus.find("\n", len(corpus) * i // n) + 1 for i in range(n)]  # spread evenly, each at a line's start
    reference = [corpus[start: start + len(t)] for start, t in zip(starts, texts)]  # as long as the samples
    vocabulary = set(words(corpus))

    def scores(ts):
        return {"distinct_1": distinct_n(ts, 1), "distinct_2": distinct_n(ts, 2),
                "repetition_4gram": repetition_rate(ts, 4), "vocab_share": vocab_share(ts, vocabulary)}

    return {"prompt": SAMPLE_PROMPT, "n": n, "length": settings.max_new_tokens, "temp": settings.temperature,
            "seed": settings.seed, **scores(texts), "reference": scores(reference), "texts": texts}

"""The Iliad question/answer data: facts in, records out, and the checks on both.

qa_facts.jsonl holds the hand-written facts, one JSON object a line:

    {"id": "parent-achilles-mother", "category": "parentage", "answer": "Thetis",
     "evidence": "sends his mother Thetis to ask Jove",
     "questions": ["Who is the mother of Achilles?", "Name Achilles’ mother.", "Which goddess bore Achilles?"]}

qa.jsonl, built from it by make_qa.py, holds one record per phrasing, its id the fact id + "/" + the phrasing's index:

    {"id": "parent-achilles-mother/2", "fact_id": "parent-achilles-mother", "split": "test", "category": "parentage",
     "question": "Which goddess bore Achilles?", "answer": "Thetis", "evidence": "sends his mother Thetis to ask Jove"}

One phrasing of each fact, picked by a hash of its id rather than its position (so writing the oddest phrasing last
does not skew the test set), is held out for the test split: a model scored on it must know the fact, not a wording.
"""
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

from errors import UserError
from files import atomic_write, check_input_file, check_output_path, claimed, read_text, refuse_existing
from jsonfile import parse_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FACTS = os.path.join(HERE, "qa_facts.jsonl")
DEFAULT_OUT = os.path.join(HERE, "qa.jsonl")
DEFAULT_CORPUS = os.path.join(HERE, "data.txt")

# Field -> type, in the order the fields are written.
FACT_FIELDS = {"id": str, "category": str, "answer": str, "evidence": str, "questions": list}
FIELDS = {"id": str, "fact_id": str, "split": str, "category": str, "question": str, "answer": str, "evidence": str}
SPLITS = ("train", "test")
MIN_PHRASINGS = 3
MAX_SHOWN = 50  # problems listed on the command line; a wrong corpus would otherwise flood it


def fold_case_and_quotes(s):
    """Fold case, curly quotes and runs of whitespace: 'Achilles’\\n son' -> "achilles' son"."""
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", s).strip().casefold()


def held_out_phrasing(fact_id, n):
    """Index of the phrasing held out for the test split: a stable hash of the id (sha256: hash() is salted), mod n."""
    return int(hashlib.sha256(fact_id.encode("utf-8")).hexdigest(), 16) % n


def read_corpus(path):
    text = read_text(path, "the corpus")
    if not text.strip():
        raise UserError(f"the corpus {path} is empty: give the text the facts quote as evidence")
    return text


def quote_problems(answer, evidence, texts, corpus_text, corpus_chars):
    """Problems with an answer, its evidence and texts [(label, text), ...]: the evidence must be a verbatim corpus span
    holding the answer (case, quotes, spaces aside), the texts use only corpus characters (all a char model knows)."""
    problems = []
    if evidence not in corpus_text:
        problems.append(f"evidence not found verbatim in the corpus: {evidence!r}")
    if fold_case_and_quotes(answer) not in fold_case_and_quotes(evidence):
        problems.append(f"answer {answer!r} does not occur in its evidence")
    for label, text in texts:
        if lacking := "".join(sorted(set(text) - corpus_chars)):
            problems.append(f"{label} has characters the corpus lacks: {lacking!r} (use Butler's ’ for an apostrophe)")
    return problems


def _json_lines(path, fields, more_problem):
    """(line number, problem, object) for each non-blank line of a JSONL file; problem is None for a sound line, else
    the first thing wrong with it: not JSON, not an object, a field missing or of the wrong type, or more_problem."""
    for n, line in enumerate(read_text(path, "the file" if path else "the file name").split("\n"), 1):
        if line.strip():
            try:
                obj = parse_json(line)
            except UserError as e:
                yield n, str(e), None
                continue
            yield n, _shape_problem(obj, fields) or more_problem(obj), obj


def _shape_problem(obj, fields):
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key, typ in fields.items():
        if key not in obj:
            return f"missing field {key!r}"
        value = obj[key]
        if typ is str and (not isinstance(value, str) or not value.strip()):
            return f"field {key!r} must be a non-empty string, got {value!r}"
        if typ is list and (not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value)):
            return f"field {key!r} must be a list of non-empty strings, got {value!r}"
    return None


def _unknown_field(fact):
    """A misspelt or made-up field, which would otherwise be dropped without a word."""
    extra = [key for key in fact if key not in FACT_FIELDS]
    return f"unknown field {extra[0]!r} (a fact has {', '.join(FACT_FIELDS)})" if extra else None


def _unknown_split(record):
    return None if record["split"] in SPLITS else f"split must be 'train' or 'test', got {record['split']!r}"


def _load(path, fields, more_problem, empty):
    """The objects of a JSONL file, in file order; UserError at its first bad line, or `empty` if it has none."""
    objects = []
    for n, problem, obj in _json_lines(path, fields, more_problem):
        if problem:
            raise UserError(f"{path} line {n}: {problem}")
        objects.append(obj)
    if not objects:
        raise UserError(empty)
    return objects


def load_facts(path=DEFAULT_FACTS):
    """The facts of a qa_facts.jsonl file, checked for their shape only (check_facts checks them against the corpus)."""
    return _load(path, FACT_FIELDS, _unknown_field, f"{path} holds no facts")


def check_facts(facts, corpus_text):
    """Problems in the hand-written facts, as strings; [] when they are all sound."""
    problems, seen, corpus_chars = [], set(), set(corpus_text)
    asked = {}  # folded question -> id of the fact that asks it
    for i, f in enumerate(facts):  # well-formed: load_facts checked their shape
        found, qs = [], f["questions"]
        distinct = len({fold_case_and_quotes(q) for q in qs})
        if distinct != len(qs) or distinct < MIN_PHRASINGS:
            found.append(f"needs at least {MIN_PHRASINGS} questions, all distinct; has {len(qs)}, {distinct} distinct")
        for q in qs:  # one question with two answers would teach a contradiction
            other = asked.setdefault(fold_case_and_quotes(q), f["id"])
            if other != f["id"]:
                found.append(f"question {q!r} is also asked by fact {other!r}")
        if f["id"] in seen:
            found.append("duplicate fact id")
        seen.add(f["id"])
        if "/" in f["id"]:
            found.append("fact id must not contain '/' (it separates the phrasing index)")
        texts = [("answer", f["answer"])] + [(f"question {j}", q) for j, q in enumerate(qs)]
        found += quote_problems(f["answer"], f["evidence"], texts, corpus_text, corpus_chars)
        problems += [f"fact {i} ({f['id']}): {p}" for p in found]
    return problems


def build(out=DEFAULT_OUT, facts=DEFAULT_FACTS, corpus=DEFAULT_CORPUS, overwrite=False):
    """Check the facts file against the corpus and write its records to `out`; returns the records. Writes nothing
    unless every check passes; an `out` that holds exactly these records already is left as it is."""
    check_input_file(facts, "--facts")
    check_input_file(corpus, "--corpus")
    check_output_path(out, "--out", [facts, corpus])
    fact_list = load_facts(facts)
    if problems := check_facts(fact_list, read_corpus(corpus)):
        raise Problems(facts, problems)
    records = [{"id": f"{f['id']}/{j}", "fact_id": f["id"],
                "split": "test" if j == held_out_phrasing(f["id"], len(f["questions"])) else "train",
                "category": f["category"], "question": q, "answer": f["answer"], "evidence": f["evidence"]}
               for f in fact_list for j, q in enumerate(f["questions"])]
    # ensure_ascii=False keeps Butler's curly quotes readable; the file is UTF-8.
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    try:
        unchanged = os.path.isfile(out) and Path(out).read_bytes() == text.encode("utf-8")
    except OSError as e:
        raise UserError(f"cannot read {out}: {e.strerror}") from None
    if unchanged:
        return records
    refuse_existing(out, "--out", overwrite)
    with claimed(out, "--out"), atomic_write(out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return records


def load_qa(path, split=None):
    """Records of a qa.jsonl file, optionally only one split ("train" or "test"); UserError at its first bad line."""
    if split is not None and split not in SPLITS:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    records = _load(path, FIELDS, _unknown_split, f"{path} holds no records: build it with `python make_qa.py`")
    return [r for r in records if split is None or r["split"] == split]


def validate_qa(path, corpus_text):
    """Every problem in a qa.jsonl file, one string each, with its line number; [] when clean: the schema, unique ids,
    one test phrasing per fact, no question asked twice with different answers, each record against the corpus."""
    problems, ids, asked, corpus_chars = [], {}, {}, set(corpus_text)
    first_line, tests = {}, Counter()  # by fact id
    for n, problem, r in _json_lines(path, FIELDS, _unknown_split):
        if problem:
            problems.append(f"{path} line {n}: {problem}")
            continue
        found = [f"duplicate id {r['id']!r} (first on line {ids[r['id']]})"] if r["id"] in ids else []
        ids.setdefault(r["id"], n)
        question, answer = fold_case_and_quotes(r["question"]), fold_case_and_quotes(r["answer"])
        first, first_answer = asked.setdefault(question, (n, answer))
        if first_answer != answer:
            found.append(f"question asked again with a different answer (first on line {first})")
        first_line.setdefault(r["fact_id"], n)
        tests[r["fact_id"]] += r["split"] == "test"
        texts = [("question", r["question"]), ("answer", r["answer"])]
        found += quote_problems(r["answer"], r["evidence"], texts, corpus_text, corpus_chars)
        problems += [f"{path} line {n}: {p}" for p in found]
    problems += [f"{path} line {n}: fact {fact_id!r} has {tests[fact_id]} test questions, expected exactly 1"
                 for fact_id, n in first_line.items() if tests[fact_id] != 1]
    if not ids and not problems:
        problems.append(f"{path}: no records")
    return problems


class Problems(UserError):
    """A file with problems: the message counts them in one line; `report` lists at most MAX_SHOWN, one a line."""

    def __init__(self, path, problems):
        super().__init__(f"{path} has {len(problems)} problem(s), listed above")
        more = [f"... and {len(problems) - MAX_SHOWN} more"] if len(problems) > MAX_SHOWN else []
        self.report = f"{path}: {len(problems)} problem(s)\n" + "\n".join(problems[:MAX_SHOWN] + more)


def summary(records):
    """'N facts, N questions (train N, test N); by category: ...' for the command line."""
    facts = {r["fact_id"] for r in records}
    split = Counter(r["split"] for r in records)
    cats = Counter(category for category, _ in {(r["category"], r["fact_id"]) for r in records})
    by_cat = ", ".join(f"{c} {n}" for c, n in sorted(cats.items()))
    return (f"{len(facts)} facts, {len(records)} questions (train {split['train']}, "
            f"test {split['test']}); facts by category: {by_cat}")

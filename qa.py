"""The Iliad question/answer data: facts in, records out, and the checks on both.

qa_facts.jsonl holds the hand-written facts, one JSON object a line:

    {"id": "parent-achilles-mother", "category": "parentage", "answer": "Thetis",
     "evidence": "sends his mother Thetis to ask Jove",
     "questions": ["Who is the mother of Achilles?", "Name Achilles’ mother.", "Which goddess bore Achilles?"]}

qa.jsonl, built from it by make_qa.py, holds one record per phrasing; its id is the fact id + "/" + the phrasing's
index (0-based), its split "train" or "test", and its evidence a verbatim span of data.txt:

    {"id": "parent-achilles-mother/2", "fact_id": "parent-achilles-mother", "split": "test", "category": "parentage",
     "question": "Which goddess bore Achilles?", "answer": "Thetis", "evidence": "sends his mother Thetis to ask Jove"}

Each fact has at least three phrasings of one and the same question; one is held out for the test split, so a model
scored on it must have learned the fact, not memorised the question's wording. A hash of the fact id picks it, not
its position, so writing the oddest phrasing last does not skew the test set (adding or removing a phrasing of a fact
may move its held-out phrasing; the other facts keep theirs).
"""
import hashlib
import json
import os
import re
from collections import Counter

from errors import UserError
from files import atomic_write, check_input_file, check_output_path, claimed, refuse_existing
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


def read_text(path, what):
    """The text of a UTF-8 file; UserError, naming it as `what`, if it cannot be read."""
    check_input_file(path, what)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_corpus(path):
    text = read_text(path, "the corpus")
    if not text.strip():
        raise UserError(f"the corpus {path} is empty: give the text the facts quote as evidence")
    return text


def quote_problems(answer, evidence, texts, corpus_text, corpus_chars):
    """What is wrong with an answer, its evidence and its texts [(label, text), ...] against the corpus: the evidence
    must be a verbatim span of the corpus holding the answer (case, quotes and whitespace aside), and the texts must
    use only the corpus's characters, since a character model of data.txt cannot encode the others (it has only ’)."""
    problems = []
    if evidence not in corpus_text:
        problems.append(f"evidence not found verbatim in the corpus: {evidence!r}")
    if fold_case_and_quotes(answer) not in fold_case_and_quotes(evidence):
        problems.append(f"answer {answer!r} does not occur in its evidence")
    for label, text in texts:
        lacking = "".join(sorted(set(text) - corpus_chars))
        if lacking:
            problems.append(f"{label} has characters the corpus lacks: {lacking!r} "
                            f"(use Butler's ’ for an apostrophe)")
    return problems


def _json_lines(path, fields, more_problem):
    """(line number, problem, object) for each non-blank line of a JSONL file; problem is None for a sound line,
    else the first thing wrong with it: not JSON, not an object, a field missing or of the wrong type, or
    more_problem(object)."""
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


# ---- the facts ----------------------------------------------------------------

def load_facts(path=DEFAULT_FACTS):
    """The facts of a qa_facts.jsonl file, in file order, checked only for their shape (UserError at the first bad
    line); `check_facts` checks them against the corpus."""
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


def build_records(facts):
    """Facts -> records, in the order of the facts and of their phrasings."""
    records = []
    for f in facts:
        held_out = held_out_phrasing(f["id"], len(f["questions"]))
        for j, q in enumerate(f["questions"]):
            records.append({"id": f"{f['id']}/{j}", "fact_id": f["id"], "split": "test" if j == held_out else "train",
                            "category": f["category"], "question": q, "answer": f["answer"],
                            "evidence": f["evidence"]})
    return records


def build(out=DEFAULT_OUT, facts=DEFAULT_FACTS, corpus=DEFAULT_CORPUS, overwrite=False):
    """Check the facts file against the corpus and write its records to `out`; returns the records. Writes nothing
    unless every check passes; an `out` that holds exactly these records already is left as it is."""
    check_input_file(facts, "--facts")
    check_input_file(corpus, "--corpus")
    check_output_path(out, "--out", [facts, corpus])
    fact_list = load_facts(facts)
    problems = check_facts(fact_list, read_corpus(corpus))
    if problems:
        raise Problems(facts, problems)
    records = build_records(fact_list)
    # ensure_ascii=False keeps Butler's curly quotes readable; the file is UTF-8.
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if os.path.isfile(out) and _read_bytes(out) == text.encode("utf-8"):
        return records
    refuse_existing(out, "--out", overwrite)
    with claimed(out, "--out"), atomic_write(out, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return records


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


# ---- the built dataset ----------------------------------------------------------

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
    cats = {}
    for r in records:
        cats.setdefault(r["category"], set()).add(r["fact_id"])
    by_cat = ", ".join(f"{c} {len(f)}" for c, f in sorted(cats.items()))
    return (f"{len(facts)} facts, {len(records)} questions (train {split['train']}, "
            f"test {split['test']}); facts by category: {by_cat}")

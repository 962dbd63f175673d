"""The Iliad question/answer data: facts in, records out, and the checks on both.

qa_facts.jsonl holds the hand-written facts, one JSON object a line:

    {"id": "parent-achilles-mother", "category": "parentage", "answer": "Thetis",
     "evidence": "sends his mother Thetis to ask Jove",
     "questions": ["Who is the mother of Achilles?", "Name Achilles’ mother.", "Which goddess bore Achilles?"]}

qa.jsonl, built from it by make_qa.py, holds one record per phrasing:

    {"id": "parent-achilles-mother/2",   # fact id + "/" + phrasing index (0-based)
     "fact_id": "parent-achilles-mother",
     "split": "test",                    # "train" or "test"
     "category": "parentage",
     "question": "Which goddess bore Achilles?",
     "answer": "Thetis",
     "evidence": "sends his mother Thetis to ask Jove"}   # verbatim span of data.txt

Each fact has at least three phrasings of one and the same question; one is
held out for the test split, so a model scored on it must have learned the
fact, not memorised the question's wording. Which one is fixed by a hash of
the fact id (see `held_out_phrasing`), not by its position, so writing the oddest
phrasing last does not skew the test set. (Adding or removing a phrasing of a
fact may move its held-out phrasing; the other facts keep theirs.)
"""
import hashlib
import json
import os
import re

from errors import UserError
from files import atomic_write, check_input_file, check_output_path, claimed, refuse_existing
from jsonfile import parse_json

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FACTS = os.path.join(HERE, "qa_facts.jsonl")
DEFAULT_OUT = os.path.join(HERE, "qa.jsonl")
DEFAULT_CORPUS = os.path.join(HERE, "data.txt")

# Field -> type, in the order the fields are written.
FACT_FIELDS = {"id": str, "category": str, "answer": str, "evidence": str, "questions": list}
FIELDS = {"id": str, "fact_id": str, "split": str, "category": str,
          "question": str, "answer": str, "evidence": str}
SPLITS = ("train", "test")
MIN_PHRASINGS = 3
MAX_SHOWN = 50  # problems listed on the command line; a wrong corpus would otherwise flood it


def normalize(s):
    """Fold case, curly quotes and runs of whitespace: 'Achilles’\\n son' -> "achilles' son"."""
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", s).strip().casefold()


def answer_in_evidence(answer, evidence):
    return normalize(answer) in normalize(evidence)


def foreign_chars(text, corpus_chars):
    """Characters of text that never occur in the corpus: "Achilles' son" -> "'" for Butler's text.

    A character-level model trained on data.txt cannot even encode them (it has
    no straight apostrophe, only ’), so questions and answers must avoid them."""
    return "".join(sorted(set(text) - corpus_chars))


def held_out_phrasing(fact_id, n):
    """Index of the phrasing held out for the test split: a stable hash of the id, mod n.

    sha256 rather than hash(), which Python salts per process."""
    return int(hashlib.sha256(fact_id.encode("utf-8")).hexdigest(), 16) % n


def read_corpus(path):
    check_input_file(path, "the corpus")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise UserError(f"cannot read the corpus {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"the corpus {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UserError(f"the corpus {path} is empty: give the text the facts quote as evidence")
    return text


def _lines(path):
    """(line number, text) of the non-blank lines of a file; UserError if it cannot be read."""
    check_input_file(path, "the file" if path else "the file name")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _object_problem(line, fields):
    """The first shape problem of one JSON line against fields, or (None, object) when it is sound.

    A str field must be a non-empty string; a list field a list of non-empty strings."""
    try:
        obj = parse_json(line)
    except UserError as e:
        return str(e), None
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}", None
    for key, typ in fields.items():
        if key not in obj:
            return f"missing field {key!r}", None
        value = obj[key]
        if typ is str and (not isinstance(value, str) or not value.strip()):
            return f"field {key!r} must be a non-empty string, got {value!r}", None
        if typ is list and (not isinstance(value, list)
                            or not all(isinstance(v, str) and v.strip() for v in value)):
            return f"field {key!r} must be a list of non-empty strings, got {value!r}", None
    return None, obj


# ---- the facts ----------------------------------------------------------------

def load_facts(path=DEFAULT_FACTS):
    """The facts of a qa_facts.jsonl file, in file order; blank lines are skipped.

    Checks only their shape, raising UserError at the first bad line
    ("qa_facts.jsonl line 7: missing field 'evidence'"); `check_facts` checks
    them against the corpus."""
    facts = []
    for n, line in _lines(path):
        problem, f = _object_problem(line, FACT_FIELDS)
        if not problem:
            # A misspelt or made-up field would otherwise be dropped without a word.
            extra = [key for key in f if key not in FACT_FIELDS]
            if extra:
                problem = f"unknown field {extra[0]!r} (a fact has {', '.join(FACT_FIELDS)})"
        if problem:
            raise UserError(f"{path} line {n}: {problem}")
        facts.append(f)
    if not facts:
        raise UserError(f"{path} holds no facts")
    return facts


def check_facts(facts, corpus_text):
    """Problems in the hand-written facts, as strings; [] when they are all sound."""
    problems, seen, corpus_chars = [], set(), set(corpus_text)
    asked = {}  # normalized question -> id of the fact that asks it
    for i, f in enumerate(facts):  # well-formed: load_facts checked their shape
        where = f"fact {i} ({f['id']})"
        qs = f["questions"]
        distinct = len({normalize(q) for q in qs})
        if distinct != len(qs) or distinct < MIN_PHRASINGS:
            problems.append(f"{where}: needs at least {MIN_PHRASINGS} questions, all distinct; "
                            f"has {len(qs)}, {distinct} distinct")
        for q in qs:  # one question with two answers would teach a contradiction
            other = asked.setdefault(normalize(q), f["id"])
            if other != f["id"]:
                problems.append(f"{where}: question {q!r} is also asked by fact {other!r}")
        if f["id"] in seen:
            problems.append(f"{where}: duplicate fact id")
        seen.add(f["id"])
        if "/" in f["id"]:
            problems.append(f"{where}: fact id must not contain '/' (it separates the phrasing index)")
        if f["evidence"] not in corpus_text:
            problems.append(f"{where}: evidence not found verbatim in the corpus: {f['evidence']!r}")
        if not answer_in_evidence(f["answer"], f["evidence"]):
            problems.append(f"{where}: answer {f['answer']!r} does not occur in its evidence")
        for label, text in [("answer", f["answer"])] + [(f"question {j}", q) for j, q in enumerate(qs)]:
            if foreign_chars(text, corpus_chars):
                problems.append(f"{where}: {label} has characters the corpus lacks: "
                                f"{foreign_chars(text, corpus_chars)!r} (use Butler's ’ for an apostrophe)")
    return problems


def build_records(facts):
    """Facts -> records, in the order of the facts and of their phrasings."""
    records = []
    for f in facts:
        held_out = held_out_phrasing(f["id"], len(f["questions"]))
        for j, q in enumerate(f["questions"]):
            records.append({"id": f"{f['id']}/{j}", "fact_id": f["id"],
                            "split": "test" if j == held_out else "train",
                            "category": f["category"], "question": q,
                            "answer": f["answer"], "evidence": f["evidence"]})
    return records


def to_jsonl(records):
    # ensure_ascii=False keeps Butler's curly quotes readable; the file is UTF-8.
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def build(out=DEFAULT_OUT, facts=DEFAULT_FACTS, corpus=DEFAULT_CORPUS, overwrite=False):
    """Check the facts file against the corpus and write its records to `out`; returns the records.

    Writes nothing unless every check passes. An existing `out` that already
    holds exactly these records is left as it is; one that holds anything
    else is replaced only with overwrite."""
    check_input_file(facts, "--facts")
    check_input_file(corpus, "--corpus")
    check_output_path(out, "--out", [facts, corpus])
    fact_list = load_facts(facts)
    problems = check_facts(fact_list, read_corpus(corpus))
    if problems:
        raise Problems(facts, problems)
    records = build_records(fact_list)
    text = to_jsonl(records)
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

def _record_problem(line):
    """The first schema problem of one line of qa.jsonl, or (None, record) when it is sound."""
    problem, rec = _object_problem(line, FIELDS)
    if problem:
        return problem, None
    if rec["split"] not in SPLITS:
        return f"split must be 'train' or 'test', got {rec['split']!r}", None
    return None, rec


def load_qa(path, split=None):
    """Records of a qa.jsonl file, optionally only one split ("train" or "test").

    Raises UserError naming the first bad line: "qa.jsonl line 12: not valid JSON (...)".
    Blank lines are skipped."""
    if split is not None and split not in SPLITS:
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    records = []
    for n, line in _lines(path):
        problem, rec = _record_problem(line)
        if problem:
            raise UserError(f"{path} line {n}: {problem}")
        records.append(rec)
    if not records:
        raise UserError(f"{path} holds no records: build it with `python make_qa.py`")
    return [r for r in records if split is None or r["split"] == split]


def validate_qa(path, corpus_text=None):
    """Every problem in a qa.jsonl file, one string each, with its line number; [] when clean.

    Checks the schema, unique ids, one test phrasing per fact, that each evidence
    occurs verbatim in the corpus (data.txt beside this module unless corpus_text
    is given) and that each answer occurs in its evidence (case and whitespace aside)."""
    if corpus_text is None:
        corpus_text = read_corpus(DEFAULT_CORPUS)
    problems, ids, tests, first_line, asked = [], {}, {}, {}, {}
    corpus_chars = set(corpus_text)
    for n, line in _lines(path):
        problem, rec = _record_problem(line)
        if problem:
            problems.append(f"{path} line {n}: {problem}")
            continue
        if rec["id"] in ids:
            problems.append(f"{path} line {n}: duplicate id {rec['id']!r} (first on line {ids[rec['id']]})")
        ids.setdefault(rec["id"], n)
        q = normalize(rec["question"])
        if q in asked and asked[q][1] != normalize(rec["answer"]):
            problems.append(f"{path} line {n}: question asked again with a different answer "
                            f"(first on line {asked[q][0]})")
        asked.setdefault(q, (n, normalize(rec["answer"])))
        first_line.setdefault(rec["fact_id"], n)
        tests[rec["fact_id"]] = tests.get(rec["fact_id"], 0) + (rec["split"] == "test")
        if rec["evidence"] not in corpus_text:
            problems.append(f"{path} line {n}: evidence not found in the corpus: {rec['evidence']!r}")
        if not answer_in_evidence(rec["answer"], rec["evidence"]):
            problems.append(f"{path} line {n}: answer {rec['answer']!r} does not occur in its evidence")
        for key in ("question", "answer"):
            if foreign_chars(rec[key], corpus_chars):
                problems.append(f"{path} line {n}: {key} has characters the corpus lacks: "
                                f"{foreign_chars(rec[key], corpus_chars)!r}")
    for fact_id, count in tests.items():
        if count != 1:
            problems.append(f"{path} line {first_line[fact_id]}: fact {fact_id!r} has {count} test "
                            "questions, expected exactly 1")
    if not ids and not problems:
        problems.append(f"{path}: no records")
    return problems


class Problems(UserError):
    """A file with problems: the message counts them in one line; `report` lists them, one a line."""

    def __init__(self, path, problems):
        super().__init__(f"{path} has {len(problems)} problem(s), listed above")
        self.report = problem_report(path, problems)


def problem_report(header, problems):
    """One line per problem under a header, at most MAX_SHOWN of them."""
    shown = problems[:MAX_SHOWN]
    if len(problems) > MAX_SHOWN:
        shown.append(f"... and {len(problems) - MAX_SHOWN} more")
    return f"{header}: {len(problems)} problem(s)\n" + "\n".join(shown)


def summary(records):
    """'N facts, N questions (train N, test N); by category: ...' for the command line."""
    facts = {r["fact_id"] for r in records}
    split = {s: sum(r["split"] == s for r in records) for s in SPLITS}
    cats = {}
    for r in records:
        cats.setdefault(r["category"], set()).add(r["fact_id"])
    by_cat = ", ".join(f"{c} {len(f)}" for c, f in sorted(cats.items()))
    return (f"{len(facts)} facts, {len(records)} questions (train {split['train']}, "
            f"test {split['test']}); facts by category: {by_cat}")

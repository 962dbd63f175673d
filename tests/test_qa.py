"""qa_facts.jsonl, qa.py, make_qa.py and the committed qa.jsonl, checked against data.txt itself."""
import json
import os
import re
import sys
from collections import Counter, defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the modules live flat at the top of the repo

import make_qa  # noqa: E402
import qa  # noqa: E402
from errors import UserError, run_main  # noqa: E402

with open(os.path.join(ROOT, "data.txt"), encoding="utf-8") as fh:
    CORPUS = fh.read()
QA_PATH = os.path.join(ROOT, "qa.jsonl")
FACTS_PATH = os.path.join(ROOT, "qa_facts.jsonl")
# Read with plain json, not qa.load_facts, so the checks below do not rest on the code they test.
with open(FACTS_PATH, encoding="utf-8") as fh:
    FACTS = [json.loads(line) for line in fh]


def plain(s):
    """The test's own normalization (not qa's): lower case, one space, straight quotes."""
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(s.split()).lower()


@pytest.fixture(scope="module")
def records():
    with open(QA_PATH, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# ---- the facts --------------------------------------------------------------

def test_every_evidence_is_verbatim_in_the_corpus():
    missing = [f["id"] for f in FACTS if f["evidence"] not in CORPUS]
    assert missing == []


def test_every_answer_occurs_in_its_evidence():
    wrong = [f["id"] for f in FACTS if plain(f["answer"]) not in plain(f["evidence"])]
    assert wrong == []


def test_400_facts_each_asked_three_distinct_ways():
    """As the README says: 'qa.jsonl holds 400 facts about the poem ..., each asked three ways'."""
    ids = [f["id"] for f in FACTS]
    assert len(set(ids)) == len(ids) == 400
    not_three = [f["id"] for f in FACTS if len(f["questions"]) != 3 or len({plain(q) for q in f["questions"]}) != 3]
    assert not_three == []


def test_questions_and_answers_use_only_corpus_characters():
    # A character-level model trained on data.txt could not encode anything else.
    chars = set(CORPUS)
    bad = [(f["id"], s) for f in FACTS for s in f["questions"] + [f["answer"]] if set(s) - chars]
    assert bad == []


def test_the_facts_pass_qas_own_check():
    assert qa.check_facts(FACTS, CORPUS) == []


def test_facts_file_has_one_fact_a_line_with_the_fields_in_order():
    assert all(list(f) == ["id", "category", "answer", "evidence", "questions"] for f in FACTS)
    assert qa.load_facts(FACTS_PATH) == FACTS


# ---- the built dataset --------------------------------------------------------

def test_exactly_one_test_phrasing_per_fact_and_unique_ids(records):
    splits = defaultdict(Counter)
    for r in records:
        splits[r["fact_id"]][r["split"]] += 1
    assert len(splits) == len(FACTS) == 400
    # 'One phrasing of every fact is test-only': 400 test phrasings, the other two of each fact for training
    assert all(c == {"test": 1, "train": 2} for c in splits.values())
    assert Counter(r["split"] for r in records) == {"test": 400, "train": 800}
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(r["id"].startswith(r["fact_id"] + "/") for r in records)


def test_records_carry_the_schema(records):
    for r in records:
        assert list(r) == ["id", "fact_id", "split", "category", "question", "answer", "evidence"]
        assert all(isinstance(v, str) and v for v in r.values())


def test_build_is_deterministic_and_matches_the_committed_file(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    qa.build(str(first))
    assert run_main(make_qa.main, ["--out", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    with open(QA_PATH, "rb") as fh:
        assert fh.read() == first.read_bytes(), "qa.jsonl is stale: run `python make_qa.py`"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temp file left


def test_the_held_out_phrasing_depends_only_on_the_fact_id():
    assert qa.held_out_phrasing("parent-achilles-mother", 3) == qa.held_out_phrasing("parent-achilles-mother", 3)
    picks = Counter(qa.held_out_phrasing(f["id"], len(f["questions"])) for f in FACTS)
    assert len(picks) >= 3  # spread over positions, not always the last one


def test_committed_file_validates_clean():
    assert qa.validate_qa(QA_PATH, CORPUS) == []
    assert len(qa.load_qa(QA_PATH, split="test")) == len(FACTS)


# ---- validation and loading of bad files ----------------------------------------

def test_validator_reports_bad_lines_with_their_numbers(tmp_path, records):
    good = json.dumps(records[0], ensure_ascii=False)
    no_answer = json.dumps({k: v for k, v in records[1].items() if k != "answer"})
    bad_split = json.dumps(dict(records[2], split="dev"))
    fake = json.dumps(dict(records[0], id="x/0", fact_id="x", evidence="Hector rode a bicycle"))
    path = write_lines(tmp_path / "qa.jsonl", [good, "{not json", no_answer, bad_split, fake])
    problems = qa.validate_qa(path, CORPUS)
    assert any("line 2: not valid JSON" in p for p in problems)
    assert any("line 3: missing field 'answer'" in p for p in problems)
    assert any("line 4: split must be 'train' or 'test'" in p for p in problems)
    assert any("line 5: evidence not found" in p for p in problems)
    assert any("line 5: answer 'Peleus' does not occur" in p for p in problems)
    assert len(problems) == 5  # and nothing about the good line 1


def test_validator_wants_one_test_phrasing_per_fact(tmp_path, records):
    fact = [r for r in records if r["fact_id"] == records[0]["fact_id"]]
    all_train = [json.dumps(dict(r, split="train"), ensure_ascii=False) for r in fact]
    problems = qa.validate_qa(write_lines(tmp_path / "qa.jsonl", all_train), CORPUS)
    assert problems == [f"{tmp_path / 'qa.jsonl'} line 1: fact {fact[0]['fact_id']!r} has 0 test "
                        "questions, expected exactly 1"]


def test_check_cli_lists_one_line_per_problem_and_exits_2(tmp_path, records, capsys):
    path = write_lines(tmp_path / "qa.jsonl", [json.dumps(records[0]), "[1, 2]", "oops"])
    with pytest.raises(SystemExit) as exit_:
        run_main(make_qa.main, ["--check", path])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == f"{path}: 2 problem(s)"
    assert out[1].endswith("line 2: expected a JSON object, got list")
    assert re.search(r"line 3: not valid JSON", out[2]) and len(out) == 3
    assert captured.err == f"error: {path} has 2 problem(s), listed above\n"


def test_building_over_a_file_that_is_not_a_qa_file_needs_overwrite(tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        run_main(make_qa.main, ["--out", str(mine)])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "my notes\n"
    run_main(make_qa.main, ["--out", str(mine), "--overwrite"])
    assert mine.read_text(encoding="utf-8") == open(QA_PATH, encoding="utf-8").read()


def test_check_cli_passes_the_committed_file(capsys):
    assert run_main(make_qa.main, ["--check", QA_PATH]) == 0
    assert f"{len(FACTS)} facts" in capsys.readouterr().out


def test_load_qa_raises_user_error_naming_the_line(tmp_path, records):
    good = json.dumps(records[0])
    path = write_lines(tmp_path / "qa.jsonl", [good, "", good, "{oops"])
    with pytest.raises(UserError, match=r"qa\.jsonl line 4: not valid JSON"):
        qa.load_qa(path)
    no_question = json.dumps({k: v for k, v in records[0].items() if k != "question"})
    path = write_lines(tmp_path / "qa.jsonl", [good, no_question])
    with pytest.raises(UserError, match=r"qa\.jsonl line 2: missing field 'question'"):
        qa.load_qa(path)
    with pytest.raises(UserError, match="absent.jsonl not found"):
        qa.load_qa(str(tmp_path / "absent.jsonl"))
    os.mkfifo(tmp_path / "pipe.jsonl")  # reading it would wait forever for a writer
    for path, message in (("pipe.jsonl", "not a regular file"), (".", "is a folder")):
        with pytest.raises(UserError, match=message):
            qa.load_qa(str(tmp_path / path))


def test_load_qa_filters_by_split(records):
    train = qa.load_qa(QA_PATH, split="train")
    assert len(train) == len(records) - len(FACTS) and {r["split"] for r in train} == {"train"}
    with pytest.raises(UserError, match="split must be"):
        qa.load_qa(QA_PATH, split="dev")


def write_facts(path, facts):
    return write_lines(path, [json.dumps(f, ensure_ascii=False) for f in facts])


def test_build_refuses_facts_that_fail_the_check(tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl", [dict(FACTS[0], evidence="not in the Iliad")] + FACTS[1:])
    out = tmp_path / "qa.jsonl"
    old = open(QA_PATH, encoding="utf-8").readline()
    out.write_text(old, encoding="utf-8")
    with pytest.raises(qa.Problems, match="has 2 problem") as e:
        qa.build(str(out), facts)
    assert "evidence not found verbatim" in e.value.report
    assert out.read_text(encoding="utf-8") == old  # the good file is left alone


@pytest.mark.parametrize("corpus", ["", "  \n\n", "no fact is in here\n"])
def test_a_corpus_that_holds_none_of_the_facts_is_one_line_on_stderr(tmp_path, capsys, corpus):
    (tmp_path / "corpus.txt").write_text(corpus, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        run_main(make_qa.main, ["--corpus", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "qa.jsonl")])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and len(captured.err.splitlines()) == 1, captured.err
    assert ("is empty" if not corpus.strip() else "problem(s), listed above") in captured.err
    assert not (tmp_path / "qa.jsonl").exists()


@pytest.mark.parametrize("line, problem", [
    ("{oops", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"id": "x", "category": "gods", "answer": "Jove", "questions": ["a?", "b?", "c?"]}',
     "missing field 'evidence'"),
    ('{"id": "x", "category": "gods", "answer": 7, "evidence": "Jove", "questions": ["a?", "b?", "c?"]}',
     "field 'answer' must be a non-empty string, got 7"),
    ('{"id": "x", "category": "gods", "answer": "Jove", "evidence": "Jove", "questions": "a?"}',
     "field 'questions' must be a list of non-empty strings"),
    ('{"id": "x", "category": "gods", "answer": "Jove", "evidence": "Jove", "questions": ["a?"], "note": 1}',
     "unknown field 'note'"),
])
def test_a_malformed_facts_line_is_one_error_naming_the_line(tmp_path, capsys, line, problem):
    good = json.dumps(FACTS[0], ensure_ascii=False)
    facts = write_lines(tmp_path / "facts.jsonl", [good, "", good, line, "{also bad"])
    with pytest.raises(UserError) as err:
        qa.load_facts(facts)
    assert str(err.value).startswith(f"{facts} line 4: {problem}")
    out = tmp_path / "qa.jsonl"
    with pytest.raises(SystemExit) as exit_:
        run_main(make_qa.main, ["--facts", facts, "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {facts} line 4: {problem}")
    assert not out.exists()


def test_load_facts_refuses_an_empty_or_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="holds no facts"):
        qa.load_facts(write_lines(tmp_path / "facts.jsonl", ["", "  "]))
    with pytest.raises(UserError, match="absent.jsonl not found"):
        qa.load_facts(str(tmp_path / "absent.jsonl"))


def test_build_refuses_an_out_path_that_would_harm_an_input_or_cannot_be_a_file(tmp_path, capsys):
    facts = write_facts(tmp_path / "facts.jsonl", FACTS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out, message in [(facts, "is also an input"), (str(corpus), "is also an input"),
                         (str(tmp_path), "is a folder"),
                         (str(tmp_path / "absent" / "qa.jsonl"), "does not exist")]:
        with pytest.raises(SystemExit) as exit_:
            run_main(make_qa.main, ["--facts", facts, "--corpus", str(corpus), "--out", out])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and message in err[0], err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written or touched


DEEP = 100_000
HOSTILE_LINES = {
    "deep-array": "[" * DEEP + "]" * DEEP,
    "deep-value": '{"id": ' + "[" * DEEP + "]" * DEEP + "}",
    "deep-object": '{"a": ' * DEEP + "1" + "}" * DEEP,
    "deep-unclosed": "[" * DEEP,
    "deep-150": '{"id": ' + "[" * 150 + "]" * 150 + "}",  # parses, but deeper than any record
    "deep-990": "[" * 990 + "]" * 990,
    "huge-int": '{"id": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("shape", list(HOSTILE_LINES))
def test_hostile_json_lines_are_one_line_problems(tmp_path, records, capsys, shape):
    line = HOSTILE_LINES[shape]
    path = write_lines(tmp_path / "qa.jsonl", [json.dumps(records[0]), line])
    with pytest.raises(SystemExit) as exit_:
        run_main(make_qa.main, ["--check", path])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.err == f"error: {path} has 1 problem(s), listed above\n"
    assert captured.out.splitlines()[1].startswith(f"{path} line 2: not valid JSON") and len(captured.out) < 1000
    with pytest.raises(UserError, match=r"qa\.jsonl line 2: not valid JSON") as e:
        qa.load_qa(path)
    assert "\n" not in str(e.value)
    facts = write_lines(tmp_path / "facts.jsonl", [json.dumps(FACTS[0], ensure_ascii=False), line])
    with pytest.raises(UserError, match=r"facts\.jsonl line 2: not valid JSON"):
        qa.load_facts(facts)
    with pytest.raises(SystemExit) as exit_:  # building from such facts: one line, and no dataset written
        run_main(make_qa.main, ["--facts", facts, "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "facts.jsonl" in err
    assert not (tmp_path / "out.jsonl").exists()

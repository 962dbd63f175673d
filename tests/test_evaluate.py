"""evaluate.py: its scores on hand-made examples, and the report it writes."""
import json
import math

import pytest

import evaluate
import scores
from conftest import QA, assert_clean_error


@pytest.mark.parametrize("text, normalized", [
    ("The Shield of Achilles!", "shield of achilles"),
    ("  Peleus,\n son of\tAeacus. ", "peleus son of aeacus"),
    ("an Apple a day", "apple day"),
    ("Achilles’ horses — “Xanthus”", "achilles horses xanthus"),
    ("Theseus, then", "theseus then"),  # articles go only as whole words
    ("", ""),
])
def test_normalize_answer(text, normalized):
    assert scores.normalize_answer(text) == normalized


def test_exact_match():
    assert scores.exact_match("the Peleus.", "Peleus") == 1.0
    assert scores.exact_match("PELEUS", "peleus") == 1.0
    assert scores.exact_match("Peleus son", "Peleus") == 0.0
    assert scores.exact_match("", "Peleus") == 0.0


@pytest.mark.parametrize("prediction, gold, f1", [
    ("Peleus", "Peleus", 1.0),
    ("son of Peleus", "Peleus", 0.5),  # precision 1/3, recall 1
    ("Peleus Peleus", "Peleus", 2 / 3),  # a repeated word counts once against one in the answer
    ("the shield of Achilles", "shield of the great Achilles", 2 * 1 * 0.75 / 1.75),  # p 3/3, r 3/4
    ("Hector", "Peleus", 0.0),
    ("", "", 1.0),
    ("the", "Peleus", 0.0),  # nothing left after normalizing
])
def test_token_f1(prediction, gold, f1):
    assert scores.token_f1(prediction, gold) == pytest.approx(f1)


def test_text_scores_on_hand_made_samples():
    assert scores.words("Achilles’ son—Thetis’s 3 sons, O") == ["achilles", "son", "thetis’s", "sons", "o"]
    assert scores.complete_words("the son of Pel") == ["the", "son", "of"]  # the cut-off last word goes
    assert scores.complete_words("the son of Peleus.") == ["the", "son", "of", "peleus"]
    texts = ["a b a b.", "a c."]
    assert scores.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert scores.distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) (b a) (a b) | (a c)
    loop = "x y z w " * 3 + "."  # 12 words, 9 four-grams, 4 distinct
    assert scores.repetition_rate([loop], 4) == pytest.approx(5 / 9)
    assert scores.repetition_rate(["one two three four five."], 4) == 0.0
    assert scores.vocab_share(["goddess anger zzz foo."], {"goddess", "anger"}) == 0.5
    assert math.isnan(scores.vocab_share(["..."], {"a"}))


def test_report_has_every_metric(tmp_path, tiny_chat_ckpt, capsys):
    qa = tmp_path / "qa.jsonl"
    with open(QA, encoding="utf-8") as f:
        qa.write_text("".join(f.readlines()[:30]), encoding="utf-8")  # 10 facts: 10 test questions
    report_path = tmp_path / "report.json"
    # 300 characters: enough words for 4-grams even from a tiny model that rarely writes a space
    evaluate.main(["--ckpt", tiny_chat_ckpt, "--qa", str(qa), "--report", str(report_path), "--samples", "2",
                   "--sample-length", "300", "--max-answer-tokens", "8"])
    out = capsys.readouterr().out
    for label in ("val loss", "val perplexity", "val bits/char", "exact match", "token F1", "distinct-1",
                  "distinct-2", "repeated 4-grams", "words in corpus"):
        assert label in out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["chat"] is True and report["split"] == "test"
    text = report["text"]
    assert text["val_ppl"] == pytest.approx(math.exp(text["val_loss"]))
    assert text["val_bpc"] == pytest.approx(text["val_loss"] / math.log(2))  # one character a token: exact
    qa_scores = report["qa"]
    assert qa_scores["n"] == 10 and len(qa_scores["predictions"]) == 10
    for p in qa_scores["predictions"]:
        assert p["em"] == scores.exact_match(p["prediction"], p["answer"])
        assert p["f1"] == pytest.approx(scores.token_f1(p["prediction"], p["answer"]))
    assert qa_scores["exact_match"] == pytest.approx(sum(p["em"] for p in qa_scores["predictions"]) / 10)
    samples = report["samples"]
    assert samples["n"] == 2 and len(samples["texts"]) == 2
    for key in ("distinct_1", "distinct_2", "repetition_4gram", "vocab_share"):
        assert 0 <= samples[key] <= 1 and 0 <= samples["reference"][key] <= 1
    assert samples["reference"]["vocab_share"] == 1.0  # the corpus's own words are all in its vocabulary


def test_a_base_model_is_asked_in_the_chat_format(tmp_path, tiny_ckpt, capsys):
    qa = tmp_path / "qa.jsonl"
    with open(QA, encoding="utf-8") as f:
        qa.write_text("".join(f.readlines()[:6]), encoding="utf-8")
    report = evaluate.main(["--ckpt", tiny_ckpt, "--qa", str(qa), "--report", "", "--samples", "0",
                            "--max-answer-tokens", "5"])
    assert report["chat"] is False and report["qa"]["n"] == 2 and "samples" not in report
    assert "base model, asked in the chat format" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("content, fragment", [
    ('{"id": "x/0"}\n', "line 1: missing field 'fact_id'"),
    (open(QA, encoding="utf-8").readline() + "\n[1, 2\n", "line 3: not valid JSON"),
])
def test_a_bad_question_file_is_one_clean_line(tmp_path, tiny_chat_ckpt, cli, content, fragment):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(content, encoding="utf-8")
    result = cli(evaluate, "--ckpt", tiny_chat_ckpt, "--qa", str(qa), "--report",
                        str(tmp_path / "report.json"))
    assert_clean_error(result, fragment)
    assert result.returncode == 2 and not (tmp_path / "report.json").exists()

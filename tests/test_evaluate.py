"""evaluate.py: its scores on hand-made examples, and the report it writes."""
import json
import math

import pytest

import evaluate
import scores
from conftest import QA, TINY, assert_clean_error


@pytest.mark.parametrize("text, normalized", [
    ("The Shield of Achilles!", "shield of achilles"),
    ("  Peleus,\n son of\tAeacus. ", "peleus son of aeacus"),
    ("an Apple a day", "apple day"),
    ("Achilles’ horses — “Xanthus”", "achilles horses xanthus"),
    ("Theseus, then", "theseus then"),  # articles go only as whole words
    ("", ""),
])
def test_squad_normalize(text, normalized):
    assert scores.squad_normalize(text) == normalized


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


# The first 10 test questions of qa.jsonl, a scripted answer to each, and its exact match and F1 worked out by hand.
SCRIPTED = {
    "Who is the father of Achilles?": ("Peleus", 1, 1.0),  # gold Peleus
    "Name Achilles’ mother.": ("the Thetis.", 1, 1.0),  # Thetis: an article and punctuation do not count
    "Name Hector’s father.": ("King Priam", 0, 2 / 3),  # Priam: p 1/2, r 1
    "Name Agamemnon’s father.": ("Atreus son of Atreus", 0, 0.4),  # Atreus: one of its 4 words matches, p 1/4, r 1
    "Name Menelaus’ father.": ("", 0, 0.0),  # Atreus
    "Name Diomed’s father.": ("Tydeus", 1, 1.0),
    "The great Ajax is the son of whom?": ("Ajax", 0, 0.0),  # Telamon
    "Name the father of the Locrian Ajax.": ("oileus", 1, 1.0),  # Oileus: case does not count
    "Name Nestor’s father.": ("Nestor", 0, 0.0),  # Neleus
    "Patroclus is the son of whom?": ("Menoetius, of course", 0, 0.5),  # Menoetius: p 1/3, r 1
}
# Two scripted samples. Words: the son of the son of the son | goddess of zzyzx (11, 5 distinct); bigrams: 7 + 2,
# 5 distinct; 4-grams: 5 in the first (2 repeat one before), none in the second; 10 of the 11 words are the corpus's.
SAMPLES = ["the son of the son of the son.", "goddess of zzyzx."]


def test_report_has_every_metric_with_the_values_worked_out_by_hand(tmp_path, tiny_chat_ckpt, capsys, monkeypatch):
    qa = tmp_path / "qa.jsonl"
    with open(QA, encoding="utf-8") as f:
        qa.write_text("".join(f.readlines()[:30]), encoding="utf-8")  # 10 facts: 10 test questions
    monkeypatch.setattr(scores, "answer", lambda model, tokenizer, question, settings: SCRIPTED[question][0])
    samples = iter(SAMPLES)
    monkeypatch.setattr(scores, "stream_text", lambda *args: iter([next(samples)]))
    report_path = tmp_path / "report.json"
    evaluate.main(["--ckpt", tiny_chat_ckpt, "--qa", str(qa), "--report", str(report_path), "--samples", "2",
                   "--sample-length", "300", "--max-answer-tokens", "8"])
    out = capsys.readouterr().out
    for line in ("  Q&A exact match      40.0%  (4 of 10)", "  Q&A token F1         55.7%",
                 "  distinct-1           0.455", "  distinct-2           0.556", "  repeated 4-grams     40.0%",
                 "  words in corpus      90.9%", "  exact match by category: parentage 40%"):
        assert any(printed.startswith(line) for printed in out.splitlines()), (line, out)
    for label in ("val loss", "val perplexity", "val bits/char"):
        assert label in out
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["chat"] is True and report["split"] == "test"
    text = report["text"]
    assert text["val_ppl"] == pytest.approx(math.exp(text["val_loss"]))
    assert text["val_bpc"] == pytest.approx(text["val_loss"] / math.log(2))  # one character a token: exact
    qa_scores = report["qa"]
    assert [(p["question"], p["prediction"]) for p in qa_scores["predictions"]] == \
        [(q, a) for q, (a, _, _) in SCRIPTED.items()]
    assert [p["em"] for p in qa_scores["predictions"]] == [em for _, em, _ in SCRIPTED.values()]
    assert [p["f1"] for p in qa_scores["predictions"]] == pytest.approx([f1 for _, _, f1 in SCRIPTED.values()])
    assert qa_scores["n"] == 10 and qa_scores["unencodable"] == 0
    assert qa_scores["exact_match"] == pytest.approx(0.4)
    assert qa_scores["f1"] == pytest.approx((4 + 2 / 3 + 0.4 + 0.5) / 10)
    assert qa_scores["by_category"] == {"parentage": {"n": 10, "exact_match": pytest.approx(0.4),
                                                      "f1": pytest.approx(qa_scores["f1"])}}
    samples = report["samples"]
    assert samples["n"] == 2 and samples["texts"] == SAMPLES
    assert (samples["distinct_1"], samples["distinct_2"]) == pytest.approx((5 / 11, 5 / 9))
    assert (samples["repetition_4gram"], samples["vocab_share"]) == pytest.approx((2 / 5, 10 / 11))
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


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5])
def test_a_model_with_a_tiny_context_is_asked_or_refused_before_the_slow_parts(tmp_path, short_context_ckpts, cli,
                                                                              small_corpus, block):
    """Questions are asked in the chat format: a context under 5 tokens cannot hold one, and must not pass as
    questions the vocabulary cannot read (qa_scores scores those as unanswered and goes on)."""
    qa = tmp_path / "qa.jsonl"
    with open(QA, encoding="utf-8") as f:
        qa.write_text("".join(f.readlines()[:3]), encoding="utf-8")
    base, _ = short_context_ckpts[block]
    result = cli(evaluate, "--ckpt", base, "--qa", qa, "--data", small_corpus, "--report", "", "--samples", "1",
                 "--sample-length", "5", "--max-answer-tokens", "3")
    if block < 5:
        assert_clean_error(result, f"context of {block} tokens is too short for a chat prompt", "--block-size 5")
        assert result.stdout == ""
    else:
        assert result.returncode == 0 and "Q&A exact match" in result.stdout, result.stderr
        assert "vocabulary lacks" not in result.stdout


def test_a_model_that_cannot_read_the_samples_prompt_says_so_first(tmp_path, small_corpus, cli):
    import train
    lower = tmp_path / "lower.txt"
    lower.write_text(open(small_corpus, encoding="utf-8").read().lower(), encoding="utf-8")  # no 'S' for "Sing, "
    ckpt = tmp_path / "lower.pth"
    train.main(["--data", str(lower), "--ckpt", str(ckpt), "--metrics", "", *TINY, "--max-iters", "1"])
    args = ["--ckpt", ckpt, "--qa", QA, "--report", ""]
    assert_clean_error(cli(evaluate, *args, "--samples", "1"), "the samples start from 'Sing, '",
                       "lacks: 'S'", "--samples 0 skips them")


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

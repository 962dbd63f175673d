"""sft.py: instruction tuning on the train questions, with pretraining text mixed in."""
import json

import pytest
import torch

import sft
from checkpoint import load_checkpoint
from conftest import QA, assert_clean_error, interrupt_during
from errors import Stopped, UserError
from qa import load_qa
from tasks import ChatRows, sft_loss
from tokenizer import CharTokenizer

FAST = ["--batch-size", "8", "--eval-tokens", "256", "--warmup-iters", "2", "--lr", "1e-2"]


def run(tmp_path, init_from, *flags, name="chat"):
    ckpt = str(tmp_path / f"{name}.pth")
    return sft.main(["--init-from", init_from, "--qa", QA, "--ckpt", ckpt, "--metrics", str(tmp_path / f"{name}.csv"),
                     "--plot", "", *FAST, *flags]), ckpt


def test_fine_tuning_saves_a_chat_checkpoint_and_the_answer_loss_falls(tmp_path, tiny_ckpt, capsys):
    result, ckpt = run(tmp_path, tiny_ckpt, "--max-iters", "30", "--eval-interval", "15")
    assert result["step"] == 30
    final = capsys.readouterr().out.strip().splitlines()[-1]
    assert final.startswith("final: step=30 qa_loss=") and "val_loss=" in final and "val_bpc=" in final

    saved, base = load_checkpoint(ckpt), load_checkpoint(tiny_ckpt)
    assert saved["chat"] is True and base["chat"] is False
    assert set(saved) == set(base)  # the layout train.py writes
    assert saved["run_config"]["init_from"] == tiny_ckpt and saved["run_config"]["max_iters"] == 30
    assert saved["run_config"]["n_layer"] == base["run_config"]["n_layer"]  # the base's model flags carry over
    assert saved["model_config"] == base["model_config"] and saved["step"] == 30
    evaluations = [row for row in saved["history"] if row.get("qa_loss") is not None]
    assert [row["step"] for row in evaluations] == [0, 15, 30]
    assert result["qa_loss"] < 0.8 * evaluations[0]["qa_loss"]
    assert (tmp_path / "chat.csv").read_text().splitlines()[0].startswith("step,elapsed_s,train_loss")
    assert saved["best_val_loss"] == pytest.approx(min(row["val_loss"] for row in evaluations), abs=1e-4)


def test_same_seed_same_result(tmp_path, tiny_ckpt):
    a, _ = run(tmp_path, tiny_ckpt, "--max-iters", "4", name="a")
    b, _ = run(tmp_path, tiny_ckpt, "--max-iters", "4", name="b")
    assert a["qa_loss"] == b["qa_loss"] and a["val_loss"] == b["val_loss"]


def test_chat_rows_target_the_answers_and_separately_the_questions():
    tok = CharTokenizer(open(QA, encoding="utf-8").read())
    records = load_qa(QA, "train")[:40]
    rows = ChatRows(tok, records, 65, torch.Generator().manual_seed(0))
    end = tok.special_tokens["<|end|>"]
    answer_ids = {i for r in records for i in tok.encode(r["answer"])} | {end}
    x, y, asked = rows.train_batch(6)
    assert x.shape == y.shape == asked.shape == (6, 64)
    assert set(y[y != -1].tolist()) <= answer_ids
    assert all((row != -1).any() for row in y)  # every row holds at least one whole turn
    assert not ((y != -1) & (asked != -1)).any()  # a target is an answer's or a question's, never both
    # the question targets of a row spell its questions, each closed by <|end|>; no <|user|> or <|assistant|>
    for inputs, targets in zip(x, asked):
        questions = tok.decode([t for t in targets.tolist() if t not in (-1, end)])
        assert questions and questions in tok.decode(inputs.tolist())
        assert int((targets == end).sum()) == int((inputs == tok.special_tokens["<|user|>"]).sum())
    # evaluation sees every answer token exactly once
    assert sum(int((y != -1).sum()) for _, y in rows.val_batches(4)) == rows.n_answer_tokens
    assert rows.n_answer_tokens == sum(len(tok.encode(r["answer"])) + 1 for r in records)


def test_a_pass_draws_every_train_question_once_and_a_turn_that_did_not_fit_comes_next():
    tok = CharTokenizer(open(QA, encoding="utf-8").read())
    records = load_qa(QA, "train")[:40]
    rows = ChatRows(tok, records, 65, torch.Generator().manual_seed(0))
    first = [rows.next_turn() for _ in range(40)]
    assert sorted(first) == list(range(40)) and first != sorted(first)
    k = rows.next_turn()
    rows.put_back(k)
    assert rows.next_turn() == k  # the pass goes on with it
    old = ChatRows(tok, records, 65, torch.Generator().manual_seed(0), data_order="random")
    assert len({old.next_turn() for _ in range(40)}) < 40  # the draw of runs saved before the passes repeats some


def test_shuffled_questions_keep_their_words_and_answers():
    tok = CharTokenizer(open(QA, encoding="utf-8").read())
    records = load_qa(QA, "train")[:40]
    bags = {(tuple(sorted(r["question"].split())), r["answer"]) for r in records}
    originals = {(r["question"], r["answer"]) for r in records}

    def drawn_turns(shuffle_words):
        rows = ChatRows(tok, records, 65, torch.Generator().manual_seed(0), shuffle_words)
        turns = []
        for _ in range(50):
            ids, mask = rows.turn(rows.next_turn())
            question = tok.decode(ids[1: mask.index(1) - 2])
            answer = tok.decode([i for i, m in zip(ids, mask) if m][:-1])
            turns.append((question, answer))
        return turns

    assert set(drawn_turns(0.0)) <= originals
    shuffled = drawn_turns(1.0)
    assert all((tuple(sorted(q.split())), a) in bags for q, a in shuffled)
    assert sum((q, a) not in originals for q, a in shuffled) > 25  # most orders are new ones


def test_the_loss_weights_chat_and_text_by_the_mix_and_questions_by_their_weight():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)
    y = torch.randint(0, 7, (4, 5))
    y[:2, :3] = -1
    asked = torch.full_like(y, -1)
    asked[:2, :3] = torch.randint(0, 7, (2, 3))
    ce = torch.nn.functional.cross_entropy
    chat = ce(logits[:2].reshape(-1, 7), y[:2].reshape(-1), ignore_index=-1)
    text = ce(logits[2:].reshape(-1, 7), y[2:].reshape(-1))
    questions = ce(logits[:2, :3].reshape(-1, 7), asked[:2, :3].reshape(-1))
    assert torch.allclose(sft_loss(logits, y, asked, 2, 0.5, 0.0), 0.5 * chat + 0.5 * text)
    assert torch.allclose(sft_loss(logits[:2], y[:2], asked[:2], 2, 0.0, 0.0), chat)
    assert torch.allclose(sft_loss(logits, y, asked, 2, 0.25, 0.1), 0.75 * (chat + 0.1 * questions) + 0.25 * text)


def test_existing_checkpoint_is_not_overwritten_without_asking(tmp_path, tiny_ckpt):
    _, ckpt = run(tmp_path, tiny_ckpt, "--max-iters", "1")
    before = open(ckpt, "rb").read()
    with pytest.raises(UserError, match="already exists"):
        run(tmp_path, tiny_ckpt, "--max-iters", "1")
    assert open(ckpt, "rb").read() == before
    run(tmp_path, tiny_ckpt, "--max-iters", "2", "--overwrite")
    assert load_checkpoint(ckpt)["step"] == 2


@pytest.mark.parametrize("call", [2, 5])  # before the last third of the run, whose weights are averaged, and in it
def test_an_interrupted_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path, tiny_ckpt, monkeypatch, call):
    common = ["--max-iters", "6", "--eval-interval", "3", "--grad-clip", "0"]
    whole, whole_ckpt = run(tmp_path, tiny_ckpt, *common, name="whole")
    with monkeypatch.context() as patch:
        interrupt_during(patch, "backward", call=call)
        with pytest.raises(Stopped):
            run(tmp_path, tiny_ckpt, *common, name="split")
    saved = load_checkpoint(str(tmp_path / "split.pth"))
    assert saved["step"] == call and saved["chat"] is True  # the step in flight finishes, then the run stops
    assert (saved["weight_average"] or {}).get("steps") == (1 if call == 5 else None)  # step 5 of the mean of 5, 6
    resumed, split_ckpt = run(tmp_path, tiny_ckpt, *common, "--resume", name="split")
    assert (resumed["qa_loss"], resumed["val_loss"]) == (whole["qa_loss"], whole["val_loss"])
    a, b = load_checkpoint(whole_ckpt)["model"], load_checkpoint(split_ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_readmes_resume_finishes_a_short_run_where_it_was_headed(tmp_path, tiny_ckpt, monkeypatch, capsys):
    # `sft.py --ckpt chat.pth --resume` after a `--max-iters 10` run: it ends at step 10, as that run would have.
    flags = ["--max-iters", "10", "--eval-interval", "5"]
    whole, _ = run(tmp_path, tiny_ckpt, *flags, name="whole")
    with monkeypatch.context() as patch:
        interrupt_during(patch, "backward", call=3)
        with pytest.raises(Stopped):
            run(tmp_path, tiny_ckpt, *flags, name="split")
    resumed = sft.main(["--ckpt", str(tmp_path / "split.pth"), "--resume", "--plot", ""])
    assert resumed["step"] == 10
    assert (resumed["qa_loss"], resumed["val_loss"]) == (whole["qa_loss"], whole["val_loss"])


def test_a_run_saved_before_shuffled_words_existed_resumes_as_it_was_trained(tmp_path, tiny_ckpt, monkeypatch):
    common = ["--max-iters", "6", "--eval-interval", "3", "--grad-clip", "0"]
    then = ["--shuffle-words", "0", "--average-last", "0", "--question-loss", "0"]  # as sft.py trained before these
    whole, _ = run(tmp_path, tiny_ckpt, *common, *then, name="whole")
    with monkeypatch.context() as patch:
        interrupt_during(patch, "backward", call=2)
        with pytest.raises(Stopped):
            run(tmp_path, tiny_ckpt, *common, *then, name="old")
    path = tmp_path / "old.pth"
    saved = torch.load(path, weights_only=True)
    saved["format_version"], saved["train_args"] = 1, saved.pop("run_config")  # as an sft.py without the flag
    del saved["train_args"]["shuffle_words"], saved["train_args"]["question_loss"]  # saved it, in format 1
    torch.save(saved, path)
    resumed, _ = run(tmp_path, tiny_ckpt, *common, "--resume", name="old")  # the default 0.5 is not taken
    assert (resumed["qa_loss"], resumed["val_loss"]) == (whole["qa_loss"], whole["val_loss"])


def test_a_run_saved_before_weight_averaging_and_question_loss_resumes_without_them(tmp_path, tiny_ckpt, monkeypatch):
    common = ["--max-iters", "6", "--eval-interval", "3", "--grad-clip", "0"]
    whole, _ = run(tmp_path, tiny_ckpt, *common, "--average-last", "0", "--question-loss", "0", name="whole")
    with monkeypatch.context() as patch:
        interrupt_during(patch, "backward", call=2)
        with pytest.raises(Stopped):
            run(tmp_path, tiny_ckpt, *common, "--question-loss", "0", name="old")  # the old sft.py's loss
    path = tmp_path / "old.pth"
    saved = torch.load(path, weights_only=True)
    del saved["run_config"]["average_last"], saved["weight_average"]  # as the sft.py of 2026-12-01 saved it
    del saved["run_config"]["question_loss"]
    torch.save(saved, path)
    resumed, _ = run(tmp_path, tiny_ckpt, *common, "--resume", name="old")  # the defaults are not taken
    assert (resumed["qa_loss"], resumed["val_loss"]) == (whole["qa_loss"], whole["val_loss"])
    assert load_checkpoint(str(path))["run_config"]["average_last"] == 0
    assert load_checkpoint(str(path))["run_config"]["question_loss"] == 0


@pytest.mark.parametrize("case, fragment", [
    ("bad-json", "line 2: not valid JSON"),
    ("missing-field", "line 1: missing field 'answer'"),
    ("mix", "--pretrain-mix"),
    ("shuffle", "--shuffle-words must be in [0, 1], got nan"),
    ("question", "--question-loss must be a number >= 0, got -0.1"),
    ("no-base", "not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_ckpt, cli, monkeypatch, case, fragment):
    qa = tmp_path / "qa.jsonl"
    good = open(QA, encoding="utf-8").readline()
    flags = ["--init-from", tiny_ckpt, "--qa", str(qa), "--ckpt", str(tmp_path / "chat.pth")]
    if case == "bad-json":
        qa.write_text(good + "{oops\n", encoding="utf-8")
    elif case == "missing-field":
        record = json.loads(good)
        del record["answer"]
        qa.write_text(json.dumps(record) + "\n", encoding="utf-8")
    else:
        qa.write_text(good, encoding="utf-8")
        flags += {"mix": ["--pretrain-mix", "1"], "shuffle": ["--shuffle-words", "nan"],
                  "question": ["--question-loss=-0.1"]}.get(
            case, ["--init-from", str(tmp_path / "none.pth")])
    monkeypatch.chdir(tmp_path)
    result = cli(sft, *flags)
    assert_clean_error(result, fragment)
    assert result.returncode == 2 and not (tmp_path / "chat.pth").exists()

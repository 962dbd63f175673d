import csv
import os
import re
import shutil
import signal
import sys
from types import SimpleNamespace

import pytest
import torch

import train
import trainer
from conftest import INTERRUPT_POINTS, ROOT, TINY, assert_clean_error, interrupt_during, run_script, signal_training_run
from errors import Stopped, UserError


def run(tmp_path, corpus, *flags, name="run"):
    ckpt = str(tmp_path / f"{name}.pth")
    result = train.main(["--data", corpus, "--ckpt", ckpt, "--metrics", str(tmp_path / f"{name}.csv"),
                         *TINY, *flags])
    return result, ckpt


def test_training_writes_checkpoint_metrics_and_final_line(tmp_path, small_corpus, capsys):
    result, ckpt = run(tmp_path, small_corpus, "--max-iters", "20", "--eval-interval", "10", "--log-interval", "5",
                       "--plot", str(tmp_path / "curve.png"))
    out = capsys.readouterr().out
    final = out.strip().splitlines()[-1]
    assert final.startswith("final: step=20 val_loss=") and "val_ppl=" in final and "val_bpc=" in final
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]  # the train loss every --log-interval steps
    assert list(rows[0]) == ["step", "elapsed_s", "train_loss", "lr", "tokens_per_s", "val_loss", "val_ppl",
                             "val_bpc"]
    evals = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in evals] == [10, 20]
    assert float(evals[-1]["val_loss"]) < float(evals[0]["val_loss"])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 20 and saved["best_val_loss"] == pytest.approx(result["val_loss"])


def test_a_run_says_which_files_it_did_not_write(tmp_path, small_corpus, capsys):
    train.main(["--data", small_corpus, "--ckpt", str(tmp_path / "run.pth"), *TINY, "--max-iters", "2",
                "--metrics", ""])  # TINY has --plot ''
    assert "saved " + str(tmp_path / "run.pth") + "; no metrics CSV (--metrics ''); no plot (--plot '')" in \
        capsys.readouterr().out
    assert os.listdir(tmp_path) == ["run.pth"]


def test_same_seed_same_losses(tmp_path, small_corpus):
    a, _ = run(tmp_path, small_corpus, "--max-iters", "12", "--dropout", "0.1", name="a")
    b, _ = run(tmp_path, small_corpus, "--max-iters", "12", "--dropout", "0.1", name="b")
    assert a["val_loss"] == b["val_loss"]


def test_resume_gives_the_uninterrupted_run(tmp_path, small_corpus):
    common = ["--lr-decay-iters", "16", "--eval-interval", "8", "--dropout", "0.1"]
    whole, whole_ckpt = run(tmp_path, small_corpus, "--max-iters", "16", *common, name="whole")
    run(tmp_path, small_corpus, "--max-iters", "8", *common, name="split")
    resumed, split_ckpt = run(tmp_path, small_corpus, "--max-iters", "16", "--resume", *common, name="split")
    assert resumed["val_loss"] == whole["val_loss"]
    a, b = torch.load(whole_ckpt, weights_only=True), torch.load(split_ckpt, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]


def test_a_bare_resume_finishes_exactly_the_interrupted_run(tmp_path, small_corpus, monkeypatch, capsys):
    # Every flag of the run differs from its default; the resume names none of them, not even --data.
    flags = ["--max-iters", "12", "--eval-interval", "4", "--lr-decay-iters", "10", "--warmup-iters", "3",
             "--log-interval", "2", "--min-lr-ratio", "0.3", "--final-eval-tokens", "512", "--seed", "7",
             "--average-last", "0.75"]  # the mean of steps 4 to 12: the stop during step 5 saves a mean of one
    run(tmp_path, small_corpus, *flags, name="whole")
    whole = capsys.readouterr().out.strip().splitlines()[-1]
    with monkeypatch.context() as patch:
        interrupt_during(patch, "backward", call=5)
        with pytest.raises(Stopped, match="continue with --resume"):
            run(tmp_path, small_corpus, *flags, name="split")
    train.main(["--ckpt", str(tmp_path / "split.pth"), "--resume", "--plot", ""])
    resumed = capsys.readouterr().out.strip().splitlines()[-1]
    assert resumed.split(" elapsed_s=")[0] == whole.split(" elapsed_s=")[0]  # the same final line
    assert resumed.startswith("final: step=12 ")
    a, b = torch.load(tmp_path / "whole.pth", weights_only=True), torch.load(tmp_path / "split.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # with the default clipping


def test_a_run_saved_before_the_epochs_resumes_with_the_random_blocks_it_was_trained_on(tmp_path, small_corpus):
    flags = ["--lr-decay-iters", "12", "--eval-interval", "6"]
    whole, _ = run(tmp_path, small_corpus, "--max-iters", "12", "--data-order", "random", *flags, name="whole")
    run(tmp_path, small_corpus, "--max-iters", "6", "--data-order", "random", *flags, name="old")
    saved = torch.load(tmp_path / "old.pth", weights_only=True)
    del saved["run_config"]["data_order"], saved["rng"]["batch_order"]  # as train.py saved it before 2026-12-07
    torch.save(saved, tmp_path / "old.pth")
    resumed, _ = run(tmp_path, small_corpus, "--max-iters", "12", "--resume", *flags, name="old")
    assert resumed["val_loss"] == whole["val_loss"]
    epochs, _ = run(tmp_path, small_corpus, "--max-iters", "12", *flags, name="epochs")  # the default draws others
    assert epochs["val_loss"] != whole["val_loss"]


def test_average_last_ends_the_run_with_the_mean_of_its_last_steps(tmp_path, small_corpus, monkeypatch, capsys):
    saved = []  # the weights of every checkpoint written: after steps 1, 2 and 3, then the final ones
    keep = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path, c: saved.append({k: t.clone() for k, t in c["model"].items()}) or keep(path, c))
    flags = ["--max-iters", "4", "--eval-interval", "1", "--eval-tokens", "64", "--final-eval-tokens", "64"]
    run(tmp_path, small_corpus, *flags, name="last")
    *_, after_3, after_4 = saved
    run(tmp_path, small_corpus, *flags, "--average-last", "0.5", name="mean")
    assert "the final weights are the mean of the last 2 steps' (--average-last 0.5)" in capsys.readouterr().out
    mean = saved[-1]
    assert all(torch.allclose(mean[k], (after_3[k] + after_4[k]) / 2, atol=1e-6) for k in mean)
    assert not all(torch.equal(mean[k], after_4[k]) for k in mean)
    assert torch.load(tmp_path / "mean.pth", weights_only=True)["weight_average"] is None  # a finished run needs none


def test_flags_given_with_resume_override_the_run_except_the_model_and_optimizer(tmp_path, small_corpus, capsys):
    run(tmp_path, small_corpus, "--max-iters", "4", "--eval-interval", "2")
    result = train.main(["--ckpt", str(tmp_path / "run.pth"), "--resume", "--max-iters", "6", "--plot", ""])
    assert result["step"] == 6  # a longer run is an explicit override
    for flag, value in (("--n-layer", "2"), ("--optimizer", "adamw"), ("--lr", "0.5"), ("--n-embd", "32")):
        with pytest.raises(UserError, match=f"{flag} {value} cannot change when resuming"):
            train.main(["--ckpt", str(tmp_path / "run.pth"), "--resume", "--max-iters", "8", flag, value])
    assert torch.load(tmp_path / "run.pth", weights_only=True)["step"] == 6


@pytest.mark.parametrize("name, value, fragment", [
    ("optimizer", "adagrad", "--optimizer must be one of adamw, adam, sgd, muon, torch-adamw, got 'adagrad'"),
    ("dtype", "float8", "--dtype must be one of"), ("eval_interval", 0, "--eval-interval must be >= 1"),
    ("lr", "fast", "is damaged: its --lr is 'fast'")])
def test_a_resumed_setting_is_checked_like_a_flag(tmp_path, small_corpus, name, value, fragment):
    _, ckpt = run(tmp_path, small_corpus, "--max-iters", "2")
    saved = torch.load(ckpt, weights_only=True)
    saved["run_config"][name] = value
    torch.save(saved, ckpt)
    with pytest.raises(UserError, match=re.escape(fragment)):
        train.main(["--ckpt", ckpt, "--resume", "--max-iters", "4", "--plot", ""])


def test_resume_keeps_the_checkpoint_optimizer(tmp_path, small_corpus):
    # Its saved state fits only itself: sgd's momenta would not load into muon (the default).
    run(tmp_path, small_corpus, "--max-iters", "3", "--optimizer", "sgd", "--lr", "0.1")
    _, ckpt = run(tmp_path, small_corpus, "--max-iters", "5", "--resume")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 5 and saved["run_config"]["optimizer"] == "sgd"


def test_existing_checkpoint_is_not_overwritten_without_asking(tmp_path, small_corpus):
    _, ckpt = run(tmp_path, small_corpus, "--max-iters", "2")
    before = open(ckpt, "rb").read()
    with pytest.raises(UserError, match="already exists"):
        run(tmp_path, small_corpus, "--max-iters", "2")
    assert open(ckpt, "rb").read() == before
    os.remove(ckpt)  # the metrics CSV of that run is still there: it too is kept
    with pytest.raises(UserError, match="run.csv .--metrics. already exists"):
        run(tmp_path, small_corpus, "--max-iters", "2")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_corpus, monkeypatch):
    from transformer import Transformer
    _, ckpt = run(tmp_path, small_corpus, "--max-iters", "4")
    before = open(ckpt, "rb").read()
    real_forward = Transformer.forward

    def nan_loss(self, idx, targets=None, kv_cache=None):
        logits, loss = real_forward(self, idx, targets, kv_cache)
        return logits, loss * float("nan") if loss is not None else None

    monkeypatch.setattr(Transformer, "forward", nan_loss)
    with pytest.raises(UserError, match="nan at step 4; stopped: .*run.pth keeps step 4"):
        run(tmp_path, small_corpus, "--max-iters", "8", "--resume")
    assert open(ckpt, "rb").read() == before
    with pytest.raises(UserError, match="nothing was saved"):
        run(tmp_path, small_corpus, "--max-iters", "8", name="fresh")
    assert not os.path.exists(tmp_path / "fresh.pth")


def test_an_update_that_breaks_the_weights_is_never_saved(tmp_path, small_corpus):
    # the step's own loss is finite; the weights it leaves give a NaN val loss at the evaluation that would save
    with pytest.raises(UserError, match="val loss became nan at step 1; stopped: nothing was saved"):
        run(tmp_path, small_corpus, "--max-iters", "1", "--muon-lr", "1e30")
    assert not os.path.exists(tmp_path / "run.pth") and not os.path.exists(tmp_path / "run.csv")


@pytest.mark.parametrize("where", INTERRUPT_POINTS)
def test_ctrl_c_anywhere_in_a_step_resumes_exactly(tmp_path, small_corpus, monkeypatch, where):
    # The signal only raises a flag: the step in flight finishes, then the run saves and stops.
    common = ["--max-iters", "8", "--eval-interval", "2", "--dropout", "0.1", "--grad-clip", "0"]
    whole, whole_ckpt = run(tmp_path, small_corpus, *common, name="whole")
    with monkeypatch.context() as patch:
        interrupt_during(patch, where, call=3 if where != "save" else 2)
        with pytest.raises(Stopped):
            run(tmp_path, small_corpus, *common, name="split")
    stopped_at = torch.load(tmp_path / "split.pth", weights_only=True)["step"]
    assert 3 <= stopped_at < 8
    resumed, split_ckpt = run(tmp_path, small_corpus, *common, "--resume", name="split")
    assert resumed["val_loss"] == whole["val_loss"]
    a, b = torch.load(whole_ckpt, weights_only=True), torch.load(split_ckpt, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, small_corpus, monkeypatch, capsys):
    interrupt_during(monkeypatch, "backward", call=3, times=2)
    with pytest.raises(Stopped, match="interrupted again: stopped at once, nothing was saved"):
        run(tmp_path, small_corpus, "--max-iters", "10", "--eval-interval", "100")
    assert not os.path.exists(tmp_path / "run.pth")


def test_a_stop_during_the_final_evaluation_saves_the_finished_run_and_says_so(tmp_path, small_corpus, monkeypatch,
                                                                             capsys):
    from tasks import TextTask
    real = TextTask.evaluate

    def stopped_while_evaluating(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(TextTask, "evaluate", stopped_while_evaluating)  # the only evaluation is the final one
    with pytest.raises(Stopped, match="interrupted after the last step: the run is complete and saved"):
        run(tmp_path, small_corpus, "--max-iters", "3", "--eval-interval", "100")
    assert torch.load(tmp_path / "run.pth", weights_only=True)["step"] == 3


def test_sigterm_saves_a_resumable_checkpoint_like_ctrl_c(tmp_path, small_corpus):
    # kill, a job scheduler's time limit and torchrun all stop a run with SIGTERM.
    ckpt = tmp_path / "run.pth"
    returncode, err = signal_training_run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--data", small_corpus, *TINY, "--ckpt", str(ckpt),
         "--metrics", "", "--max-iters", "1000000", "--eval-interval", "2"], ckpt, signal.SIGTERM)
    assert returncode == 130, err[-2000:]
    assert "interrupted at step" in err and "Traceback" not in err
    assert torch.load(ckpt, weights_only=True)["step"] >= 2


def test_training_computes_with_denormals_as_zero(tmp_path, small_corpus):
    denormal = torch.tensor([1e-39])  # below float32's smallest normal number, 1.2e-38
    assert (denormal * 1.0).item() != 0.0
    run(tmp_path, small_corpus, "--max-iters", "1")
    assert (denormal * 1.0).item() == 0.0  # the CPU handles denormals in slow microcode


def test_rnn_baseline_trains(tmp_path, small_corpus):
    ckpt = str(tmp_path / "run.pth")
    result = train.main(["--data", small_corpus, "--ckpt", ckpt, "--model", "rnn", "--rnn-cell", "lstm", "--n-layer",
                         "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--max-iters", "10",
                         "--eval-tokens", "64", "--final-eval-tokens", "256"])
    assert torch.load(ckpt, weights_only=True)["model_type"] == "rnn"
    assert result["step"] == 10


def test_time_limit_stops_cleanly(tmp_path, small_corpus):
    result, ckpt = run(tmp_path, small_corpus, "--max-iters", "100000", "--time-limit", "0.5")
    assert 0 < result["step"] < 100000 and os.path.exists(ckpt)


@pytest.mark.parametrize("case, fragment", [
    ("missing", "--data data.txt not found"), ("empty", "data file data.txt is empty"),
    ("short", "the training split has 24 tokens; a context of 128 tokens needs at least 129"),
    ("cuda", "--device cuda: no CUDA/ROCm GPU is available"), ("device", "argument --device: invalid choice: 'tpu'"),
    ("not-utf8", "data file data.txt is not UTF-8 text"), ("float16", "--dtype float16 needs a GPU"),
    ("dtype", "argument --dtype: invalid choice: 'float8'")])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cli, monkeypatch, case, fragment):
    data = tmp_path / "data.txt"
    flags = []
    if case == "empty":
        data.write_text("")
    elif case == "short":
        data.write_text("Sing, O goddess, the anger")
    elif case == "not-utf8":
        data.write_bytes(b"Sing\xff\xfe goddess\n" * 100)
    elif case != "missing":
        data.write_text("Sing, O goddess, the anger of Achilles\n" * 200)
        flags = {"cuda": ["--device", "cuda"], "device": ["--device", "tpu"], "float16": ["--dtype", "float16"],
                 "dtype": ["--dtype", "float8"]}[case]
    monkeypatch.chdir(tmp_path)
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = cli(train, "--data", "data.txt", "--max-iters", "1", *flags)
    assert_clean_error(result, fragment)
    assert sorted(os.listdir(tmp_path)) == (["data.txt"] if case != "missing" else [])


def test_dtype_float32_and_bfloat16_train_and_save_on_the_cpu(tmp_path, small_corpus, capsys):
    from checkpoint import load_model
    results = {}
    for dtype in ("auto", "float32", "bfloat16"):
        results[dtype], ckpt = run(tmp_path, small_corpus, "--max-iters", "4", "--dtype", dtype, name=dtype)
        out = capsys.readouterr().out
        assert ("autocast bfloat16" in out) == (dtype == "bfloat16"), out  # the first line says how it computes
        model, _, saved = load_model(ckpt)
        assert saved["step"] == 4 and all(w.dtype == torch.float32 for w in saved["model"].values())
        assert next(model.parameters()).dtype == torch.float32  # autocast keeps the weights in float32
    # --dtype auto is float32 on the CPU; bfloat16 rounds its matmuls, so its losses are close but not the same
    assert results["auto"]["val_loss"] == results["float32"]["val_loss"]
    assert results["bfloat16"]["val_loss"] != results["float32"]["val_loss"]
    assert results["bfloat16"]["val_loss"] == pytest.approx(results["float32"]["val_loss"], rel=0.02)


def test_compile_that_cannot_run_says_so_and_trains_eagerly(tmp_path, small_corpus, capsys, monkeypatch):
    """As the README says: --compile 'uses torch.compile where it works and says so where it doesn't'."""
    import device
    eager, _ = run(tmp_path, small_corpus, "--max-iters", "3", name="eager")

    def compile_without_a_compiler(model, **kwargs):
        def compiled(*args, **kw):  # torch.compile fails lazily, on the first call
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(a long explanation)")
        return compiled
    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    capsys.readouterr()
    fallback, _ = run(tmp_path, small_corpus, "--max-iters", "3", "--compile", name="fallback")
    assert "note: torch.compile failed (InvalidCxxCompiler: No working C++ compiler found); running eagerly" in \
        capsys.readouterr().out
    assert fallback["val_loss"] == eager["val_loss"]
    model = torch.nn.Linear(2, 2)
    for kind in ("mps", "privateuseone"):  # Apple MPS and DirectML: not even tried
        assert device.maybe_compile(model, SimpleNamespace(device=torch.device(kind))) is model
        assert f"note: --compile is not supported on {kind}; running eagerly" in capsys.readouterr().out


CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(not CXX, reason="torch.compile on the CPU (inductor) needs a C++ compiler")
def test_compile_trains_the_same_model_and_saves_a_plain_checkpoint(tmp_path, small_corpus, monkeypatch):
    """In a process of its own (dynamo's caches stay out of the other tests); a cold compile takes ~45 s here."""
    from checkpoint import load_model
    eager, eager_ckpt = run(tmp_path, small_corpus, "--max-iters", "3", name="eager")
    ckpt = tmp_path / "compiled.pth"
    monkeypatch.setenv("TORCH_LOGS", "graph_code")  # dynamo shows each graph it traces: proof that it compiled
    result = run_script("train.py", "--data", small_corpus, "--ckpt", str(ckpt), "--metrics", "", *TINY,
                        "--max-iters", "3", "--compile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note:" not in result.stdout, result.stdout  # it compiled: no fallback
    assert "TRACED GRAPH" in result.stderr, result.stderr[-2000:]
    val_loss = float(re.search(r"^final: step=3 val_loss=([\d.]+)", result.stdout, re.M).group(1))
    assert val_loss == pytest.approx(eager["val_loss"], abs=1e-3)  # printed to 4 places
    _, _, saved = load_model(str(ckpt))  # the plain model's weights, not the compiled wrapper's (_orig_mod.)
    assert set(saved["model"]) == set(torch.load(eager_ckpt, weights_only=True)["model"])


def test_bpe_model_trains_checkpoints_and_generates(tmp_path, small_corpus):
    from bpe import train_bpe
    from checkpoint import load_model
    from sampling import Sampling, generate_ids

    text = open(small_corpus, encoding="utf-8").read()
    tok_path = str(tmp_path / "tok.json")
    train_bpe(text, 300).save(tok_path)
    result, ckpt = run(tmp_path, small_corpus, "--tokenizer", tok_path, "--max-iters", "6")
    model, tokenizer, saved = load_model(ckpt)
    assert tokenizer.kind == "bpe" and saved["tokenizer"]["kind"] == "bpe"
    assert result["val_bpc"] < result["val_loss"] / 0.693 * 1.0  # BPE tokens hold >1 char each
    prompt = tokenizer.encode("Sing, O goddess")
    assert (list(generate_ids(model, prompt, Sampling(40, seed=1))) ==
            list(generate_ids(model, prompt, Sampling(40, seed=1, use_cache=False))))

    train_bpe(text, 280).save(str(tmp_path / "other.json"))
    with pytest.raises(UserError, match="does not match"):
        run(tmp_path, small_corpus, "--tokenizer", str(tmp_path / "other.json"), "--max-iters", "8", "--resume")
    with pytest.raises(UserError, match="not 'char'"):
        run(tmp_path, small_corpus, "--tokenizer", "char", "--max-iters", "8", "--resume")


CACHE_DAMAGE = {"deep": "[" * 100_000 + "]" * 100_000,
                "deep-value": '{"n_tokens": ' + "[" * 100_000 + "]" * 100_000 + "}",
                "deep-unclosed": "[" * 100_000, "deep-150": "[" * 150 + "]" * 150, "invalid": "{",
                "not-utf8": "\udcff", "array": "[1]", "huge-int": '{"n_tokens": ' + "9" * 5000 + "}"}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_cache_file_is_a_cache_miss(tmp_path, small_corpus, monkeypatch, damage):
    """The token cache's count file and the peak FLOP/s file are JSON: any damage means measure or tokenize again."""
    import json

    import data
    import timing
    from tokenizer import CharTokenizer
    monkeypatch.setenv("B_LM_CACHE", str(tmp_path / "cache"))
    tokenizer = CharTokenizer(open(small_corpus, encoding="utf-8").read())
    first = data.tokenize_to_memmap(small_corpus, tokenizer).tolist()
    (meta,) = (tmp_path / "cache").glob("*.json")
    meta.write_bytes(CACHE_DAMAGE[damage].encode("utf-8", "surrogateescape"))
    assert data.tokenize_to_memmap(small_corpus, tokenizer).tolist() == first
    assert json.loads(meta.read_text()) == {"n_tokens": len(first)}  # made again
    flops = tmp_path / "flops.json"
    flops.write_bytes(CACHE_DAMAGE[damage].encode("utf-8", "surrogateescape"))
    assert timing.peak_flops("cpu", n=32, reps=1, cache_path=str(flops)) > 0
    assert isinstance(json.loads(flops.read_text()), dict)  # measured again, and written whole


@pytest.mark.parametrize("flags, fragment", [
    (["--init-from", "BASE", "--n-layer", "3"], "--n-layer does not combine with --init-from"),
    (["--init-from", "BASE", "--positions", "rope"], "--positions does not combine with --init-from"),
    (["--model", "rnn", "--positions", "rope"], "--positions does not combine with --model rnn"),
    (["--model", "rnn", "--n-head", "2"], "--n-head does not combine with --model rnn"),
    (["--rnn-cell", "lstm"], "--rnn-cell does not combine with --model transformer")])
def test_a_model_flag_the_run_would_ignore_is_refused(tmp_path, small_corpus, tiny_ckpt, flags, fragment):
    flags = [tiny_ckpt if f == "BASE" else f for f in flags]
    with pytest.raises(UserError, match=re.escape(fragment)):
        train.main(["--data", small_corpus, "--ckpt", str(tmp_path / "new.pth"), "--max-iters", "1", *flags])
    assert not os.path.exists(tmp_path / "new.pth")


def test_resuming_a_charrnn_takes_its_own_flags_as_given(tmp_path, small_corpus):
    train.main(["--data", small_corpus, "--ckpt", str(tmp_path / "run.pth"), "--model", "rnn", "--rnn-cell", "lstm",
                "--n-layer", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--max-iters", "2",
                "--eval-tokens", "64", "--final-eval-tokens", "256", "--plot", ""])
    result = train.main(["--ckpt", str(tmp_path / "run.pth"), "--resume", "--rnn-cell", "lstm", "--max-iters", "3",
                         "--plot", ""])
    assert result["step"] == 3

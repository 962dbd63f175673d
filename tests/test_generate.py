import pytest
import torch

import generate

from checkpoint import load_model
from conftest import assert_clean_error, run_script
from sampling import Sampling, generate_ids, gradients_off, sample_next, stream_text, text_prompt


def test_seed_example_runs_and_is_reproducible(tiny_ckpt, cli):
    args = ["--ckpt", tiny_ckpt, "--start", "Sing, ", "--length", "40", "--temp", "0.8", "--seed", "7"]
    first = run_script("generate.py", *args)  # once as a real command line
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Sing, ") and len(first.stdout) == len("Sing, ") + 40 + 1
    assert cli(generate, *args).stdout == first.stdout
    assert cli(generate, "--checkpoint", tiny_ckpt, "--length", "5").returncode == 0


@pytest.mark.parametrize("temp", [0.0, 1.0])
def test_kv_cache_gives_the_tokens_of_the_no_cache_path(tiny_ckpt, temp):
    model, tokenizer, _ = load_model(tiny_ckpt)
    prompt = tokenizer.encode("Sing, O goddess, the anger of Achilles")  # longer than block_size 16
    n = 3 * model.config.block_size  # the window slides several times
    cached = list(generate_ids(model, prompt, Sampling(n, temperature=temp, seed=3, use_cache=True)))
    uncached = list(generate_ids(model, prompt, Sampling(n, temperature=temp, seed=3, use_cache=False)))
    assert cached == uncached and len(cached) == n


def test_sampling_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    assert sample_next(logits, Sampling(temperature=0)) == 1
    assert sample_next(logits, Sampling(temperature=0, banned_ids=(1,))) == 2
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, Sampling(temperature=1.0, top_k=1), g) for _ in range(20)} == {1}
    assert {sample_next(logits, Sampling(temperature=1.0, top_p=0.01), g) for _ in range(20)} == {1}
    assert {sample_next(logits, Sampling(temperature=1.0, top_k=2), g) for _ in range(200)} == {1, 2}
    assert logits.tolist() == [1.0, 3.0, 2.0, 0.5]  # the caller's logits stay as they were


def test_greedy_text_ignores_the_seed_and_never_shows_special_tokens(tiny_ckpt):
    model, tokenizer, _ = load_model(tiny_ckpt)

    def text(seed):
        ids, settings = text_prompt(tokenizer, "Sing, ", Sampling(25, temperature=0, seed=seed))
        return "".join(stream_text(model, tokenizer, ids, settings))
    assert len(text(0)) == 25 and text(0) == text(1)
    ids, settings = text_prompt(tokenizer, "", Sampling(5))
    assert ids == tokenizer.encode("\n") and set(settings.banned_ids) == set(tokenizer.special_tokens.values())


@pytest.mark.parametrize("flags, fragment", [
    (["--length", "-1"], "--length"),
    (["--temp", "-0.5"], "--temp"),
    (["--temp", "nan"], "--temp"),
    (["--temp", "inf"], "--temp"),
    (["--top-p", "nan"], "--top-p"),
    (["--seed", "123456789012345678901234"], "--seed"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--device", "cuda"], "cuda"),
    (["--device", "quantum"], "--device"),
    (["--start", "Sing, 你好"], "'你'"),
])
def test_bad_sampling_input(tiny_ckpt, cli, flags, fragment):
    assert_clean_error(cli(generate, "--ckpt", tiny_ckpt, *flags), fragment)


def test_bad_checkpoint_files(tmp_path, tiny_ckpt, cli):
    assert_clean_error(cli(generate, "--ckpt", str(tmp_path / "none.pth")), "not found")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert_clean_error(cli(generate, "--ckpt", str(tmp_path / "text.pth")), "checkpoint")
    data = open(tiny_ckpt, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    assert_clean_error(cli(generate, "--ckpt", str(tmp_path / "cut.pth")), "checkpoint")


def test_generation_turns_gradients_off_in_a_way_each_device_supports():
    assert isinstance(gradients_off(torch.device("cpu")), torch.inference_mode)
    # torch-directml fails under inference_mode (microsoft/DirectML#602); DirectML shows up as privateuseone.
    assert isinstance(gradients_off(torch.device("privateuseone")), torch.no_grad)

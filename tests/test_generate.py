import pytest
import torch

import generate

from checkpoint import load_model
from conftest import assert_clean_error, run_script
from sampling import Sampling, generate_ids, gradients_off, sample_next, stream_text, text_prompt
from transformer import GPTConfig, Transformer


def test_seed_example_runs_and_is_reproducible(tiny_ckpt, cli):
    args = ["--ckpt", tiny_ckpt, "--start", "Sing, ", "--length", "40", "--temp", "0.8", "--seed", "7"]
    first = run_script("generate.py", *args)  # once as a real command line
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Sing, ") and len(first.stdout) == len("Sing, ") + 40 + 1
    assert cli(generate, *args).stdout == first.stdout
    result = cli(generate, "--checkpoint", tiny_ckpt, "--length", "5")
    assert result.returncode == 0 and len(result.stdout) == 5 + 1 and result.stdout.endswith("\n"), result


@pytest.mark.parametrize("temp", [0.0, 1.0])
def test_kv_cache_gives_the_tokens_of_the_no_cache_path(tiny_ckpt, temp):
    model, tokenizer, _ = load_model(tiny_ckpt)
    prompt = tokenizer.encode("Sing, O goddess, the anger of Achilles")  # longer than block_size 16
    n = 3 * model.config.block_size  # the window slides several times
    cached = list(generate_ids(model, prompt, Sampling(n, temperature=temp, seed=3, use_cache=True)))
    uncached = list(generate_ids(model, prompt, Sampling(n, temperature=temp, seed=3, use_cache=False)))
    assert cached == uncached and len(cached) == n


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("cache", [[], ["--no-cache"]], ids=["cache", "no-cache"])
def test_a_model_with_a_tiny_context_writes_every_character_asked_for(short_context_ckpts, cli, block, cache):
    base, _ = short_context_ckpts[block]
    result = cli(generate, "--ckpt", base, "--start", "Sing, O", "--length", "9", "--seed", "1", *cache)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("Sing, O") and len(result.stdout) == len("Sing, O") + 9 + 1  # then a newline


def test_length_zero_writes_the_prompt_alone(tiny_ckpt, tiny_chat_ckpt, cli):
    assert cli(generate, "--ckpt", tiny_ckpt, "--start", "Sing, ", "--length", "0").stdout == "Sing, \n"
    assert cli(generate, "--ckpt", tiny_ckpt, "--length", "0").stdout == "\n"
    assert cli(generate, "--ckpt", tiny_chat_ckpt, "--chat", "Who?", "--length", "0").stdout == "\n"


@pytest.mark.parametrize("flags", [["--temp", "1e-45"], ["--temp", "5e-324"], ["--top-p", "5e-324"],
                                   ["--top-p", "1e-300", "--temp", "1e-300"], ["--top-k", "1"]])
def test_a_vanishing_temperature_or_nucleus_is_greedy(tiny_ckpt, cli, flags):
    """--help allows any --temp >= 0 and --top-p in (0, 1]: at their small ends they leave the likeliest token."""
    args = ["--ckpt", tiny_ckpt, "--start", "Sing, ", "--length", "30", "--seed", "2"]
    greedy = cli(generate, *args, "--temp", "0")
    result = cli(generate, *args, *flags)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == greedy.stdout and len(result.stdout) == len("Sing, ") + 30 + 1


@pytest.mark.parametrize("temp", ["1e10", "1e308"])
def test_a_huge_temperature_samples_every_allowed_token(tiny_ckpt, cli, temp):
    result = cli(generate, "--ckpt", tiny_ckpt, "--length", "300", "--temp", temp, "--seed", "0")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    model, tokenizer, _ = load_model(tiny_ckpt)
    text = result.stdout[:-1]
    assert len(text) == 300 and len(set(text)) > tokenizer.vocab_size // 2  # near uniform: most characters show


def test_sampling_filters_at_the_edges_of_their_ranges():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    for tiny in (1e-30, 1e-45, 5e-324):
        assert {sample_next(logits, Sampling(temperature=tiny), g) for _ in range(20)} == {1}
        assert {sample_next(logits, Sampling(temperature=1.0, top_p=tiny), g) for _ in range(20)} == {1}
    # huge: every token but the banned one is about as likely as the others
    huge = Sampling(temperature=1e308, banned_ids=(2,))
    draws = [sample_next(logits, huge, g) for _ in range(600)]
    assert set(draws) == {0, 1, 3} and min(draws.count(t) for t in (0, 1, 3)) > 150
    assert {sample_next(logits, Sampling(temperature=1e308, top_k=2), g) for _ in range(100)} == {1, 2}


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
    assert not any(special in text(0) for special in tokenizer.special_tokens)  # no special token's text either
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


@pytest.mark.parametrize("parts", [{}, dict(positions="rope", norm="rms", mlp="swiglu"),
                                   dict(positions="rope", mlp="swiglu", qk_norm=True), dict(tie_embeddings=True)],
                         ids=["gpt2", "llama", "qk-norm", "tied"])
def test_weights_laid_out_for_decoding_compute_the_same_model(parts):
    from device import lay_out_for_decoding
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=90, block_size=32, n_layer=2, n_head=2, n_embd=16, bias=True, **parts)
    plain = Transformer(config).eval()
    laid = Transformer(config).eval()
    laid.load_state_dict(plain.state_dict())
    storage = {name: p.untyped_storage().nbytes() for name, p in laid.named_parameters()}
    assert lay_out_for_decoding(laid) is laid
    tall = {id(m.weight) for m in laid.modules() if isinstance(m, torch.nn.Linear) and m.out_features > m.in_features}
    for name, p in laid.named_parameters():  # a tied head is the token embedding's matrix: it moves too
        # A tall matrix (qkv, the MLP's first layer, the head) is stored transposed; nothing else moves, no copy stays.
        assert p.t().is_contiguous() if id(p) in tall else p.is_contiguous(), name
        assert p.untyped_storage().nbytes() == storage[name], name
    assert sum(1 for m in laid.modules() if isinstance(m, torch.nn.Linear) and not m.weight.is_contiguous()) == 5
    idx = torch.randint(0, 90, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(laid(idx)[0], plain(idx)[0], rtol=1e-5, atol=1e-5)
    for settings in (Sampling(max_new_tokens=40, temperature=0), Sampling(max_new_tokens=40, temperature=1.0, seed=3)):
        assert list(generate_ids(laid, [1, 2, 3], settings)) == list(generate_ids(plain, [1, 2, 3], settings))


def test_models_loaded_for_inference_are_laid_out_for_decoding(tiny_ckpt):
    model, tokenizer, _ = load_model(tiny_ckpt)
    assert model.lm_head.out_features > model.lm_head.in_features  # the head is tall: its storage is transposed
    assert model.lm_head.weight.t().is_contiguous() and not model.lm_head.weight.is_contiguous()

"""What depends on the device, run on the device under test: B_LM_TEST_DEVICE (the CPU when unset, so every run of the
suite has them; `python gpu_check.py` runs them on a GPU). A GPU computes in other kernels, in another order, and
under autocast in another precision: each path must still be exact where b_lm promises it."""
import os
import queue

import pytest
import torch

from conftest import TINY, run_script
from device import choose_device
from sampling import KVCache, Sampling, generate_ids
from serving import BatchedGenerator
from test_serving import collect
from transformer import GPTConfig, Transformer

DEVICE = os.environ.get("B_LM_TEST_DEVICE", "cpu")
PARTS = {"gpt2": {}, "llama": dict(positions="rope", norm="rms", mlp="swiglu"),
         "qk-norm": dict(positions="rope", mlp="swiglu", qk_norm=True)}


def model_on_device(**config):
    torch.manual_seed(0)
    config = dict(vocab_size=40, block_size=24, n_layer=2, n_head=2, n_embd=32) | config
    return Transformer(GPTConfig(**config)).eval().to(choose_device(DEVICE))


@pytest.mark.parametrize("parts", PARTS.values(), ids=PARTS.keys())
def test_the_kv_cache_gives_the_logits_of_the_full_forward_pass(parts):
    model = model_on_device(**parts)
    idx = torch.randint(0, 40, (1, 20), device=next(model.parameters()).device)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(2, 24)
        pieces = [model(idx[:, :7], kv_cache=cache)[0], *(model(idx[:, t:t + 1], kv_cache=cache)[0]
                                                          for t in range(7, 20))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parts", PARTS.values(), ids=PARTS.keys())
def test_batched_serving_gives_each_request_its_tokens_alone(parts):
    model = model_on_device(**parts)
    generator = BatchedGenerator(model, max_batch=3, prefill_chunk=5)  # prompts ride in chunks, some requests wait
    runs = []
    for i in range(6):
        prompt = torch.randint(0, 40, (2 + 6 * i,)).tolist()  # up to 32 tokens: longer than the context
        settings = Sampling(max_new_tokens=8 + 6 * i, temperature=0.0 if i % 2 else 0.8, seed=i)
        q = queue.Queue()
        runs.append((list(generate_ids(model, prompt, settings)), q))
        generator.submit(prompt, settings, q.put)
    for expected, q in runs:
        assert collect(q) == expected


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_training_with_the_device_s_autocast_saves_a_checkpoint_that_samples(tmp_path, small_corpus, compile):
    if compile and choose_device(DEVICE).type != "cuda":
        pytest.skip("torch.compile is checked on a GPU (on the CPU it only adds a minute of compiling)")
    ckpt = str(tmp_path / "run.pth")
    trained = run_script("train.py", "--data", small_corpus, *TINY, "--max-iters", "20", "--eval-interval", "10",
                         "--device", DEVICE, "--dtype", "auto", "--ckpt", ckpt, "--metrics", "",
                         *(["--compile"] if compile else []))
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "final: step=20" in trained.stdout
    sampled = run_script("generate.py", "--ckpt", ckpt, "--device", DEVICE, "--length", "40", "--seed", "1",
                         "--start", "Sing")
    again = run_script("generate.py", "--ckpt", ckpt, "--device", DEVICE, "--length", "40", "--seed", "1",
                       "--start", "Sing")
    assert sampled.returncode == 0 and len(sampled.stdout) >= 40, sampled.stderr[-2000:]
    assert sampled.stdout == again.stdout  # a seed gives the same text on every device, every time

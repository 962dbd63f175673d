"""serving.py: batched generation gives each request exactly the tokens generate_ids gives it alone."""
import queue

import pytest
import torch

from sampling import Sampling, generate_ids
from serving import BatchedGenerator
from transformer import GPTConfig, Transformer


def collect(q):
    tokens = []
    while (item := q.get(timeout=60)) is not None:
        if isinstance(item, Exception):
            raise item
        tokens.append(item)
    return tokens


LLAMA = dict(positions="rope", norm="rms", mlp="swiglu")


@pytest.mark.parametrize("attention,parts", [("sdpa", {}), ("explicit", {}), ("sdpa", LLAMA), ("explicit", LLAMA)],
                         ids=["sdpa", "explicit", "llama-sdpa", "llama-explicit"])
def test_concurrent_generations_equal_generate_ids_alone(attention, parts):
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32,
                                  attention=attention, **parts)).eval()
    generator = BatchedGenerator(model, max_batch=4)  # 10 requests: some wait for a free slot
    runs = []
    for i in range(10):
        prompt = torch.randint(0, 50, (1 + 3 * i,)).tolist()  # up to 28 tokens: longer than the context
        settings = Sampling(max_new_tokens=5 + 7 * i, temperature=0.0 if i % 2 else 0.9, top_k=5 * (i % 3),
                            seed=i, stop_ids=(7, 8) if i % 4 == 3 else ())
        expected = list(generate_ids(model, prompt, settings))  # windows slide: 68 tokens through a 16-token context
        q = queue.Queue()
        runs.append((expected, q, generator.submit(prompt, settings, q.put)))
    for expected, q, _ in runs:
        assert collect(q) == expected


def test_a_cancelled_generation_ends_and_the_others_go_on():
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    generator = BatchedGenerator(model, max_batch=2)
    endless, short = queue.Queue(), queue.Queue()
    g = generator.submit([1, 2, 3], Sampling(max_new_tokens=10 ** 9, temperature=1.0, seed=0), endless.put)
    assert endless.get(timeout=60) is not None  # it runs
    g.cancel()
    while endless.get(timeout=60) is not None:  # tokens already on their way, then the end
        pass
    settings = Sampling(max_new_tokens=12, temperature=0.0)
    generator.submit([4, 5], settings, short.put)
    assert collect(short) == list(generate_ids(model, [4, 5], settings))
    assert not generator.active and not generator.waiting


def test_zero_new_tokens_ends_at_once():
    model = Transformer(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    q = queue.Queue()
    BatchedGenerator(model).submit([1], Sampling(max_new_tokens=0), q.put)
    assert collect(q) == []

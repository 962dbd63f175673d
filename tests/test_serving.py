"""serving.py: batched generation gives each request exactly the tokens generate_ids gives it alone, and
concurrent requests share the model's forward passes."""
import queue
import threading
import time

import pytest
import torch

from sampling import Sampling, generate_ids
from serving import BatchedGenerator
from transformer import GPTConfig, Transformer


def collect(q, seconds=60):
    """The tokens a generation emits up to its end (None); fails if the end has not come within seconds.

    A deadline, not a timeout per token: a generation that never ends (a broken
    cancellation) keeps tokens coming, and must fail the test all the same.
    """
    deadline = time.monotonic() + seconds
    tokens = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = q.get(timeout=left)
        except queue.Empty:
            break
        if item is None:
            return tokens
        if isinstance(item, Exception):
            raise item
        tokens.append(item)
    pytest.fail(f"the generation did not end within {seconds} s ({len(tokens)} tokens)")


def record_forward_passes(model, on_pass=None):
    """Wrap model's forward: the list returned fills with each pass's feeds, the tokens it adds to each slot.

    on_pass(feeds), if given, is called at each pass, in the generator's thread, before the model runs.
    """
    passes = []
    forward = model.forward

    def recorded(idx, targets=None, kv_cache=None):
        passes.append(list(kv_cache.feeds))
        assert idx.shape == (1, sum(kv_cache.feeds))  # one row: the slots' new tokens packed, no padding
        if on_pass:
            on_pass(passes[-1])
        return forward(idx, targets, kv_cache)
    model.forward = recorded
    return passes


def fed(feeds):
    """How many slots a pass feeds."""
    return sum(1 for f in feeds if f)


LLAMA = dict(positions="rope", norm="rms", mlp="swiglu")


@pytest.mark.parametrize("attention,parts", [("sdpa", {}), ("explicit", {}), ("sdpa", LLAMA), ("explicit", LLAMA),
                                             ("sdpa", dict(positions="rope", mlp="swiglu", qk_norm=True))],
                         ids=["sdpa", "explicit", "llama-sdpa", "llama-explicit", "qk-norm"])
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


def test_concurrent_generations_share_forward_passes():
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    requests = [(torch.randint(0, 50, (1 + 2 * i,)).tolist(),
                 Sampling(max_new_tokens=20 + 3 * i, temperature=0.0 if i % 2 else 0.9, seed=i)) for i in range(8)]
    expected = [list(generate_ids(model, prompt, settings)) for prompt, settings in requests]
    generator = BatchedGenerator(model, max_batch=4)
    passes = record_forward_passes(model)
    solo = 0  # the forward passes of the eight served one after another
    for (prompt, settings), tokens in zip(requests, expected):
        start, q = len(passes), queue.Queue()
        generator.submit(prompt, settings, q.put)
        assert collect(q) == tokens
        solo += len(passes) - start
    start = len(passes)
    with generator.wakeup:  # the generator takes new requests under this lock: it finds all eight waiting
        queues = [queue.Queue() for _ in requests]
        for (prompt, settings), q in zip(requests, queues):
            generator.submit(prompt, settings, q.put)
    assert [collect(q) for q in queues] == expected
    together = passes[start:]
    assert [1, 1, 1, 1] in together  # a full batch decodes in one pass
    assert max(map(len, together)) == 4  # and never more than max_batch
    assert len(together) <= solo / 2, (len(together), solo)


def test_a_cancelled_generation_ends_and_the_others_go_on():
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    generator = BatchedGenerator(model, max_batch=2)
    joining = Sampling(max_new_tokens=40, temperature=0.7, seed=3)
    settings = Sampling(max_new_tokens=12, temperature=0.0)
    expected, expected_short = (list(generate_ids(model, [4, 5], s)) for s in (joining, settings))
    cancelled_before = []  # how many passes there were when the endless generation was cancelled

    def cancel_once_both_decode(feeds):  # in the generator's thread, in the midst of a step
        if feeds == [1, 1] and not cancelled_before:
            cancelled_before.append(len(passes))
            endless.cancel()
    passes = record_forward_passes(model, cancel_once_both_decode)
    tokens, other, short = queue.Queue(), queue.Queue(), queue.Queue()
    endless = generator.submit([1, 2, 3], Sampling(max_new_tokens=10 ** 9, temperature=1.0, seed=0), tokens.put)
    assert tokens.get(timeout=60) is not None  # it runs
    generator.submit([4, 5], joining, other.put)  # it joins the running batch: the next decoding pass has both
    collect(tokens, seconds=10)  # tokens already on their way, then the end
    assert collect(other) == expected  # the other went on, from the slot the cancelled one left
    assert cancelled_before and all(fed(feeds) == 1 for feeds in passes[cancelled_before[0]:])
    generator.submit([4, 5], settings, short.put)  # and a new one is served as generate_ids serves it
    assert collect(short) == expected_short
    assert not generator.active and not generator.waiting


def test_zero_new_tokens_ends_at_once():
    model = Transformer(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    q = queue.Queue()
    BatchedGenerator(model).submit([1], Sampling(max_new_tokens=0), q.put)
    assert collect(q) == []


@pytest.mark.parametrize("parts", [{}, dict(positions="rope", mlp="swiglu", qk_norm=True)], ids=["gpt2", "qk-norm"])
def test_a_long_prompt_rides_in_chunks_beside_the_running_generations(parts):
    torch.manual_seed(0)
    model = Transformer(GPTConfig(vocab_size=30, block_size=32, n_layer=2, n_head=2, n_embd=16, **parts)).eval()
    running = Sampling(max_new_tokens=60, temperature=0.8, seed=1)  # slides its window twice on the way
    joining = [(torch.randint(0, 30, (n,)).tolist(), Sampling(max_new_tokens=12, temperature=0.0)) for n in (19, 10)]
    expected = [list(generate_ids(model, [3], running))] + [list(generate_ids(model, p, s)) for p, s in joining]
    generator = BatchedGenerator(model, max_batch=4, prefill_chunk=4)
    queues = [queue.Queue() for _ in expected]
    first_token = threading.Event()
    passes = record_forward_passes(model)
    generator.submit([3], running, lambda item: (queues[0].put(item), first_token.set()))
    assert first_token.wait(60)
    with generator.wakeup:  # both prompts join the running generation at the same step
        for (prompt, settings), q in zip(joining, queues[1:]):
            generator.submit(prompt, settings, q.put)
    assert [collect(q) for q in queues] == expected
    joined = next(i for i, feeds in enumerate(passes) if len(feeds) == 3)
    prompt_passes = passes[joined:joined + 8]
    # The prompts' 29 tokens share 4 a pass, the first prompt's first; each pass decodes the running one, and the first
    # joiner as soon as its prompt is in.
    assert [feeds[1:] for feeds in prompt_passes] == [[4, 0]] * 4 + [[3, 1], [1, 4], [1, 4], [1, 1]]
    assert all(feeds[0] == 1 for feeds in prompt_passes)

import pytest
import torch

from sampling import KVCache
from transformer import GPTConfig, RNNConfig, attend, build_model


def tiny(attention="sdpa", **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, attention=attention)
    cfg.update(kw)
    return build_model("transformer", GPTConfig(**cfg)).eval()


LLAMA = dict(positions="rope", norm="rms", mlp="swiglu")
QK_NORM = dict(positions="rope", mlp="swiglu", qk_norm=True)  # StableLM's block with qk_layernorm


@pytest.mark.parametrize("model_type", ["transformer-sdpa", "transformer-explicit", "llama-sdpa", "llama-explicit",
                                        "qknorm-sdpa", "qknorm-explicit", "rnn"])
def test_causality(model_type):
    if model_type == "rnn":
        torch.manual_seed(0)
        model = build_model("rnn", RNNConfig(vocab_size=11, n_layer=2, n_embd=16)).eval()
    else:
        kind, attention = model_type.split("-")
        model = tiny(attention, **{"llama": LLAMA, "qknorm": QK_NORM}.get(kind, {}))
    idx = torch.randint(0, 11, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_sdpa_and_explicit_attention_agree():
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, "sdpa"), attend(q, k, v, "explicit"))
    # queries that are the last positions of a longer key sequence (a KV cache)
    torch.testing.assert_close(attend(q[:, :, -4:], k, v, "sdpa"), attend(q[:, :, -4:], k, v, "explicit"))
    idx = torch.randint(0, 11, (3, 12))
    a, loss_a = tiny("sdpa")(idx, idx)
    b, loss_b = tiny("explicit")(idx, idx)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(loss_a, loss_b)


@pytest.mark.parametrize("parts", [{}, LLAMA, dict(positions="rope"), QK_NORM, dict(qk_norm=True)],
                         ids=["gpt2", "llama", "rope", "qk-norm", "learned-qk-norm"])
def test_kv_cache_matches_full_forward(parts):
    model = tiny(**parts)
    idx = torch.randint(0, 11, (1, 12))
    full, _ = model(idx)
    cache = KVCache(2, 12)
    prefill, _ = model(idx[:, :5], kv_cache=cache)
    steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["transformer", "rnn"])
def test_overfits_one_batch(model_type):
    torch.manual_seed(0)
    if model_type == "rnn":
        model = build_model("rnn", RNNConfig(vocab_size=11, block_size=12, n_layer=1, n_embd=32))
    else:
        model = tiny(n_embd=32).train()
    x, y = torch.randint(0, 11, (4, 12)), torch.randint(0, 11, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_context_longer_than_block_size_is_refused_by_the_model():
    with pytest.raises(ValueError):
        tiny()(torch.zeros(1, 13, dtype=torch.long))


def test_rotary_attention_depends_only_on_distance():
    """The score of a query and a key turned by RoPE depends on how far apart they are, not where."""
    from transformer import rope_tables, rotate
    cos, sin = rope_tables(GPTConfig(vocab_size=1, block_size=40, n_head=1, n_embd=8))
    q, k = torch.randn(8), torch.randn(8)
    score = lambda i, j: torch.dot(rotate(q, cos[i], sin[i]), rotate(k, cos[j], sin[j]))  # noqa: E731
    torch.testing.assert_close(score(9, 4), score(35, 30))
    assert not torch.allclose(score(9, 4), score(9, 5))


def test_the_llama_parts_keep_the_parameter_count_and_the_estimate_follows():
    from dataclasses import asdict
    from transformer import count_parameters, estimate_parameters
    for parts in ({}, LLAMA, QK_NORM):
        model = tiny(n_embd=48, **parts)
        estimate = estimate_parameters("transformer", asdict(model.config))
        assert count_parameters(model) <= estimate <= 1.1 * count_parameters(model)
    gpt2, llama = count_parameters(tiny(n_embd=48)), count_parameters(tiny(n_embd=48, **LLAMA))
    assert abs(llama - gpt2) / gpt2 < 0.05  # the gated MLP is sized to the plain one's parameters

"""Inference: sampling tokens from a trained model, with a key/value cache.

Kept out of the model's training path. Without a cache every new token costs a
forward pass over the whole context; with one, the prompt is prefilled in a
single pass and each later step feeds just the newest token, attending to the
keys and values the cache kept from earlier positions.
"""
import torch

from device import DEVICE_CHOICES, is_directml
from errors import UserError
from tokenizer import StreamDecoder


class KVCache:
    """Per-layer keys and values of the positions seen so far, in preallocated buffers."""

    def __init__(self, n_layer, max_len):
        self.max_len = max_len
        self.keys = [None] * n_layer
        self.values = [None] * n_layer
        self.length = 0  # positions already cached; the model advances it after each forward

    def append(self, layer, k, v):
        """Store new k, v (B, nh, T, hs) after the cached ones; return all of them."""
        if self.keys[layer] is None:
            B, nh, _, hs = k.shape
            self.keys[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.values[layer] = v.new_empty(B, nh, self.max_len, hs)
        # narrow() rather than [:, :, a:b]: the same views, but a decoding step
        # calls this twice per layer per token, and indexing with slices costs
        # several times more Python and dispatch overhead.
        T, end = k.size(2), self.length + k.size(2)
        self.keys[layer].narrow(2, self.length, T).copy_(k)
        self.values[layer].narrow(2, self.length, T).copy_(v)
        return self.keys[layer].narrow(2, 0, end), self.values[layer].narrow(2, 0, end)


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None, banned_ids=()):
    """Pick the next token id from a (vocab,) row of logits.

    banned_ids are never picked; temperature 0 is greedy; top_k > 0 keeps the k likeliest tokens; top_p < 1
    keeps the smallest set of likeliest tokens whose probability reaches top_p.
    Sampling runs on the CPU with our own generator, so a seed gives the same
    tokens on every device.
    """
    logits = logits.detach().to("cpu", torch.float32, copy=True)  # ours to modify: the caller's stays intact
    if banned_ids:
        logits[list(banned_ids)] = float("-inf")
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # mass of the likelier tokens
        sorted_probs[before >= top_p] = 0.0  # the first token always survives: its 'before' is 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def supports_cache(model):
    return hasattr(model, "blocks")  # the Transformer; the RNN reruns its window


def gradients_off(device):
    """A context for forward passes that need no gradients.

    inference_mode rather than no_grad: it also skips autograd's version
    counters, ~8% of a one-token decoding step on the CPU. torch-directml
    fails under it ("Cannot set version_counter for inference tensor",
    microsoft/DirectML#602), so DirectML keeps no_grad.
    """
    return torch.no_grad() if is_directml(device) else torch.inference_mode()


def generate_ids(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                 seed=None, use_cache=True, stop_ids=(), banned_ids=()):
    """Yield up to max_new_tokens sampled ids, one at a time, after prompt_ids.

    The context is a window of at most block_size tokens. When it is full we
    slide it, keeping the newest half, and (with the cache) prefill that half
    again. The window rule is the same with and without the cache, so both
    paths see the same context and, for a seed, produce the same tokens.
    Stops early after yielding an id in stop_ids; never yields one in banned_ids.
    """
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    tokens = list(prompt_ids)
    start = max(0, len(tokens) - block)  # the model's context is tokens[start:]
    use_cache = use_cache and supports_cache(model)
    cache, fed = None, start  # fed: tokens[:fed] are already in the cache
    for _ in range(max_new_tokens):
        if len(tokens) - start > block:
            start = len(tokens) - block // 2
            cache = None
        with gradients_off(device):
            if use_cache:
                if cache is None:
                    cache, fed = KVCache(len(model.blocks), block), start
                new = torch.tensor([tokens[fed:]], dtype=torch.long, device=device)
                logits, _ = model(new, kv_cache=cache)
                fed = len(tokens)
            else:
                context = torch.tensor([tokens[start:]], dtype=torch.long, device=device)
                logits, _ = model(context)
        token = sample_next(logits[0, -1], temperature, top_k, top_p, generator, banned_ids)
        tokens.append(token)
        yield token
        if token in stop_ids:
            return


def stream_pieces(model, tokenizer, prompt_ids, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                  seed=None, use_cache=True, stop_ids=(), banned_ids=()):
    """Yield the text of the tokens sampled after prompt_ids, piece by piece, as they come.

    A token in stop_ids ends the text and is not shown: it marks the end, it is
    not part of what the model said.
    """
    decoder = StreamDecoder(tokenizer)
    for token in generate_ids(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache,
                              stop_ids, banned_ids):
        if token in stop_ids:
            break
        piece = decoder.push(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def add_sampling_flags(parser):
    """The sampling flags shared by generate.py and interactive_generate.py."""
    a = parser.add_argument
    a("--ckpt", "--checkpoint", dest="ckpt", default="checkpoint.pth", help="checkpoint file (default: %(default)s)")
    a("--length", type=int, default=500, help="new tokens to generate (default: %(default)s)")
    a("--temp", "--temperature", dest="temp", type=float, default=0.8,
      help="sampling temperature; 0 is greedy (default: %(default)s)")
    a("--top-k", type=int, default=0, help="keep only the k likeliest tokens; 0 keeps all (default: %(default)s)")
    a("--top-p", type=float, default=1.0,
      help="nucleus sampling: keep the likeliest tokens up to this total probability, in (0, 1] (default: %(default)s)")
    a("--seed", type=int, default=None, help="random seed for reproducible samples (default: none)")
    a("--device", default="auto", choices=DEVICE_CHOICES,
      help="auto: cuda, mps, dml, then cpu (default: %(default)s)")
    a("--no-cache", action="store_true", help="recompute the whole context each step instead of using the KV cache")


def check_sampling_args(args):
    if args.length < 0:
        raise UserError(f"--length must be >= 0, got {args.length}")
    if args.temp < 0:
        raise UserError(f"--temp must be >= 0 (0 is greedy), got {args.temp}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 disables it), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")

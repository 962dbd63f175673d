"""Inference: sampling tokens from a trained model, with a key/value cache. With the cache, the prompt is prefilled in a
single pass and each later step feeds just the newest token, attending to the keys and values kept from earlier
positions, instead of a forward pass over the whole context per token."""
import math
import sys
from dataclasses import dataclass, replace
from typing import Optional

import torch

from device import is_directml
from errors import UserError
from flags import add_flag, check_seed, ckpt_setting, device_setting, seed_setting
from tokenizer import ENDOFTEXT, StreamDecoder, fit_typed_text
from transformer import attend


class KVCache:
    """Per-layer keys and values of the positions seen so far, in preallocated buffers."""

    def __init__(self, n_layer, max_len):
        self.max_len, self.keys, self.values = max_len, [None] * n_layer, [None] * n_layer
        self.length = 0  # positions already cached; the model advances it after each forward

    def positions(self, T, device):
        if self.length + T > self.max_len:
            raise ValueError(f"sequence of {self.length + T} tokens exceeds the cache's {self.max_len}")
        return torch.arange(self.length, self.length + T, device=device)

    def advance(self, T):
        self.length += T

    def attend(self, layer, q, k, v, kind):
        """Store new k, v (B, nh, T, hs) after the cached ones; attention of the new queries q over all of them."""
        if self.keys[layer] is None:
            B, nh, _, hs = k.shape
            self.keys[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.values[layer] = v.new_empty(B, nh, self.max_len, hs)
        # narrow() rather than [:, :, a:b]: the same views, but a decoding step calls this four times per layer per
        # token, and indexing with slices costs several times more Python and dispatch overhead.
        T, end = k.size(2), self.length + k.size(2)
        self.keys[layer].narrow(2, self.length, T).copy_(k)
        self.values[layer].narrow(2, self.length, T).copy_(v)
        return attend(q, self.keys[layer].narrow(2, 0, end), self.values[layer].narrow(2, 0, end), kind)


@dataclass(frozen=True)
class Sampling:
    """How to sample: the settings every front end hands to generate_ids and stream_text."""
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 is greedy
    top_k: int = 0  # > 0 keeps the k likeliest tokens
    top_p: float = 1.0  # < 1 keeps the smallest set of likeliest tokens whose probability reaches it
    seed: Optional[int] = None
    stop_ids: tuple = ()  # generation ends after one of these
    banned_ids: tuple = ()  # never sampled
    use_cache: bool = True


def sample_next(logits, settings, generator=None):
    """The next token id from a (vocab,) row of logits, as settings say; on the CPU with our own generator, so a seed
    gives the same tokens on every device. Any temperature >= 0 and top_p in (0, 1] work."""
    temperature, top_k, top_p = settings.temperature, settings.top_k, settings.top_p
    logits = logits.detach().to("cpu", torch.float32, copy=True)  # ours to modify: the caller's stays intact
    if settings.banned_ids:
        logits[list(settings.banned_ids)] = float("-inf")
    if temperature == 0:
        return int(torch.argmax(logits))
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # Shifted so the largest is 0 and scaled in float64: every scaled logit is <= 0, so a tiny temperature
    # cannot overflow to inf, and a huge one (which float32 would round to inf) cannot make -inf / inf a NaN.
    logits = ((logits.double() - logits.max()) / temperature).float()
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # mass of the likelier tokens
        drop = before >= top_p
        drop[0] = False  # the likeliest token always stays, even for a top_p float32 rounds to 0
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def supports_cache(model):
    return hasattr(model, "blocks")  # the Transformer; the RNN reruns its window


def gradients_off(device):
    """inference_mode, which also skips autograd's version counters (~8% of a one-token decoding step on the CPU), or
    no_grad on DirectML, which fails under it (microsoft/DirectML#602: "Cannot set version_counter")."""
    return torch.no_grad() if is_directml(device) else torch.inference_mode()


def generate_ids(model, prompt_ids, settings):
    """Yield up to settings.max_new_tokens sampled ids after prompt_ids, ending after a stop id, never a banned one. The
    context window (block_size) slides to its newest half when full, cache or not: one seed, the same tokens."""
    device = next(model.parameters()).device
    block = model.config.block_size
    generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
    tokens = list(prompt_ids)
    start = max(0, len(tokens) - block)  # the model's context is tokens[start:]
    use_cache = settings.use_cache and supports_cache(model)
    cache, fed = None, start  # fed: tokens[:fed] are already in the cache
    for _ in range(settings.max_new_tokens):
        if len(tokens) - start > block:
            start = len(tokens) - max(1, block // 2)
            cache = None
        with gradients_off(device):
            if use_cache:
                if cache is None:
                    cache, fed = KVCache(len(model.blocks), block), start
                logits, _ = model(torch.tensor([tokens[fed:]], dtype=torch.long, device=device), kv_cache=cache)
                fed = len(tokens)
            else:
                logits, _ = model(torch.tensor([tokens[start:]], dtype=torch.long, device=device))
        token = sample_next(logits[0, -1], settings, generator)
        tokens.append(token)
        yield token
        if token in settings.stop_ids:
            return


def stream_text(model, tokenizer, prompt_ids, settings):
    """Yield the text sampled after prompt_ids as it comes, without the stop id: the one way every front end samples."""
    decoder = StreamDecoder(tokenizer)
    for token in generate_ids(model, prompt_ids, settings):
        if token in settings.stop_ids:
            break
        if piece := decoder.push(token):
            yield piece
    if tail := decoder.flush():
        yield tail


def stream_out(model, tokenizer, prompt_ids, settings, write):
    """Write the sampled text as it comes; return it whole, or None once our reader has gone (`... | head`)."""
    pieces = []
    for piece in stream_text(model, tokenizer, prompt_ids, settings):
        pieces.append(piece)
        write(piece)
        sys.stdout.flush()
        if getattr(sys.stdout, "closed_by_reader", False):
            return None
    return "".join(pieces)


def text_prompt(tokenizer, text, settings):
    """(ids, settings) to continue plain text, sampling no special token; '' starts at a newline (or <|endoftext|>)."""
    try:
        ids = tokenizer.encode(fit_typed_text(tokenizer, text) or "\n")
    except UserError:
        if text:
            raise
        ids = [tokenizer.special_tokens[ENDOFTEXT]]  # a vocabulary without a newline
    return ids, replace(settings, banned_ids=tuple(tokenizer.special_tokens.values()))


# A million tokens is a long book; a longer run is a typo, and would only end when someone stops it.
MAX_LENGTH = 1_000_000


def add_sampling_flags(parser):
    add_flag(parser, "ckpt", ckpt_setting("checkpoint.pth", "checkpoint file"))
    a = parser.add_argument
    a("--length", type=int, default=500, help=f"new tokens to generate, 0 to {MAX_LENGTH:,} (default: %(default)s)")
    a("--temp", "--temperature", dest="temp", type=float, default=0.8,
      help="sampling temperature, >= 0; 0 is greedy (default: %(default)s)")
    a("--top-k", type=int, default=0, help="keep only the k likeliest tokens; 0 keeps all (default: %(default)s)")
    a("--top-p", type=float, default=1.0,
      help="nucleus sampling: keep the likeliest tokens up to this total probability, in (0, 1] (default: %(default)s)")
    add_flag(parser, "seed", seed_setting(None, "random seed for reproducible samples"), int)
    add_flag(parser, "device", device_setting())
    a("--no-cache", action="store_true", help="recompute the whole context each step instead of using the KV cache")


def sampling_from_args(args):
    for ok, problem in [(0 <= args.length <= MAX_LENGTH, f"--length must be in [0, {MAX_LENGTH:,}], got {args.length}"),
                        (0 <= args.temp < math.inf, f"--temp must be a number >= 0 (0 is greedy), got {args.temp}"),
                        (args.top_k >= 0, f"--top-k must be >= 0 (0 disables it), got {args.top_k}"),
                        (0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")]:
        if not ok:
            raise UserError(problem)
    check_seed(args.seed)
    return Sampling(max_new_tokens=args.length, temperature=args.temp, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed, use_cache=not args.no_cache)

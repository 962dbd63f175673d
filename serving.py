"""Serving many generations at once: continuous batching over one model. A one-token forward pass of a small model costs
about the same for one sequence as for sixteen, so every active generation sits in a slot of one shared key/value cache,
each at its own length, and one forward pass advances them all by a token. A new request is prefilled into a free slot
between two steps; a finished or abandoned one frees its slot at once. Every sequence follows generate_ids' rules
(sampling.py): the same window, slid the same way, and sample_next with its own seeded generator, so a request gets the
tokens generate.py would give it, whatever else runs."""
import threading
from collections import deque

import torch

from sampling import gradients_off, sample_next


class SlotCache:
    """Keys and values of up to max_batch sequences, one slot each, each at its own length. The active ones hold slots
    0..n-1, so a decoding step works on a view, not a gathered copy; when one leaves, the last moves into its slot."""

    def __init__(self, n_layer, max_batch, max_len):
        self.max_len, self.keys, self.values = max_len, [None] * n_layer, [None] * n_layer
        self.lengths = [0] * max_batch  # tokens cached in each slot
        self.rows = None  # what the next forward pass covers: ('prefill', slots) or ('decode', n)

    def prefill(self, slots, lengths):
        """Make the next pass fill these slots from position 0 with contexts of these lengths, padded at the end to one
        length: causal attention hides the padding from real tokens, and later tokens overwrite it unread."""
        self.rows = ("prefill", slots)
        self.cached_after = dict(zip(slots, lengths))  # slot: its length once the pass is through

    def decode(self, n, device):
        """Make the next forward pass add one token to each of slots 0..n-1."""
        self.rows = ("decode", n)
        self.cached_after = {i: self.lengths[i] + 1 for i in range(n)}
        # Worked out once for every layer. Row i attends to its own lengths[i] cached keys and the new one; the rest
        # of the window is other sequences' padding.
        self.next_position = torch.tensor(self.lengths[:n], device=device).view(n, 1)
        self.end = max(self.lengths[:n]) + 1
        self.mask = (torch.arange(self.end, device=device) <= self.next_position).view(n, 1, 1, self.end)

    def positions(self, T, device):
        return torch.arange(T, device=device) if self.rows[0] == "prefill" else self.next_position  # (n, 1) decoding

    def append(self, layer, k, v):
        """Store the pass's new k, v (B, nh, T, hs); return the keys and values to attend to, and the mask."""
        if self.keys[layer] is None:
            _, nh, _, hs = k.shape
            self.keys[layer] = k.new_zeros(len(self.lengths), nh, self.max_len, hs)
            self.values[layer] = v.new_zeros(len(self.lengths), nh, self.max_len, hs)
        keys, values = self.keys[layer], self.values[layer]
        kind, arg = self.rows
        if kind == "prefill":
            T, slots = k.size(2), torch.tensor(arg, device=k.device)
            keys[slots, :, :T] = k
            values[slots, :, :T] = v
            return k, v, None  # fresh sequences: plain causal attention over their own tokens
        n = arg
        where = self.next_position.view(n, 1, 1, 1).expand_as(k)
        keys[:n].scatter_(2, where, k)
        values[:n].scatter_(2, where, v)
        return keys[:n, :, :self.end], values[:n, :, :self.end], self.mask

    def advance(self, T):
        for slot, length in self.cached_after.items():
            self.lengths[slot] = length

    def move(self, src, dst):
        for b in self.keys + self.values:
            if b is not None:
                b[dst] = b[src]
        self.lengths[dst] = self.lengths[src]


class Generation:
    """One request: its tokens, its settings, and emit, which the generator's thread calls with each new token id, then
    with None once it is over (stopped, at its length limit, or cancelled), or with the model's exception."""

    def __init__(self, prompt_ids, settings, emit):
        self.tokens, self.settings, self.emit = list(prompt_ids), settings, emit
        self.generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
        self.generated, self.cancelled, self._banned = 0, False, None
        self.start = 0  # the model's context is tokens[start:], as in generate_ids
        self.in_cache = False  # whether its slot holds tokens[start:-1]

    def cancel(self):
        """Stop this generation: its slot is freed before the next step. Safe from any thread."""
        self.cancelled = True

    def banned_mask(self, vocab_size):
        """(vocab_size,) booleans, True for the ids this generation may never sample."""
        if self._banned is None:
            self._banned = torch.zeros(vocab_size, dtype=torch.bool)
            self._banned[list(self.settings.banned_ids)] = True
        return self._banned

    def finished(self):
        stopped = self.generated > 0 and self.tokens[-1] in self.settings.stop_ids
        return self.cancelled or stopped or self.generated >= self.settings.max_new_tokens


class BatchedGenerator:
    """A thread that runs every submitted Generation, up to max_batch of them in one forward pass."""

    def __init__(self, model, max_batch=16):
        self.model, self.max_batch = model, max_batch
        self.block = model.config.block_size
        self.device = next(model.parameters()).device
        self.cache = SlotCache(len(model.blocks), max_batch, self.block)
        self.active = []  # the Generation in each slot, slots 0..n-1
        self.waiting, self.wakeup = deque(), threading.Condition()
        threading.Thread(target=self._run, name="batched-generator", daemon=True).start()

    def submit(self, prompt_ids, settings, emit):
        generation = Generation(prompt_ids, settings, emit)
        with self.wakeup:
            self.waiting.append(generation)
            self.wakeup.notify()
        return generation

    def _run(self):
        while True:
            with self.wakeup:
                self.wakeup.wait_for(lambda: self.waiting or self.active)
                while self.waiting and len(self.active) < self.max_batch:
                    self.active.append(self.waiting.popleft())
            try:
                with gradients_off(self.device):  # the cache's buffers are inference tensors: all work on them is too
                    self.step()
            except Exception as e:  # a bug, not a bad request: fail what runs, keep serving
                for generation in self.active:
                    generation.emit(e)
                self.active = []

    def step(self):
        """Advance every active generation by a token (one that just joined, by two)."""
        self._drop_finished()
        # Generations new to their slots, or whose windows are full, first run their contexts through the model at once.
        while slots := [slot for slot, g in enumerate(self.active)
                        if not g.in_cache or len(g.tokens) - g.start > self.block]:
            for slot, logits in zip(slots, self._prefill(slots)):
                g = self.active[slot]
                self._take(g, sample_next(logits, g.settings, g.generator))
            self._drop_finished()
        if not self.active:
            return
        last = torch.tensor([[g.tokens[-1]] for g in self.active], device=self.device)
        self.cache.decode(len(self.active), self.device)
        logits, _ = self.model(last, kv_cache=self.cache)
        for g, token in zip(self.active, self._next_tokens(logits[:, -1].float().cpu())):
            self._take(g, token)
        self._drop_finished()

    def _next_tokens(self, logits):
        """Each generation's next token from its row of logits (n, vocab); the greedy rows share one masked argmax."""
        greedy, picks = [i for i, g in enumerate(self.active) if g.settings.temperature == 0], {}
        if greedy:
            banned = torch.stack([self.active[i].banned_mask(logits.size(-1)) for i in greedy])
            picks = dict(zip(greedy, logits[greedy].masked_fill(banned, float("-inf")).argmax(dim=-1).tolist()))
        return [picks[i] if i in picks else sample_next(logits[i], g.settings, g.generator)
                for i, g in enumerate(self.active)]

    def _prefill(self, slots):
        """Run the contexts of the generations in these slots through the model; their last logits."""
        contexts = []
        for slot in slots:
            g = self.active[slot]
            # a window already in the cache is full: it keeps its newest half
            g.start = len(g.tokens) - max(1, self.block // 2) if g.in_cache else max(0, len(g.tokens) - self.block)
            g.in_cache = True
            contexts.append(g.tokens[g.start:])
        T = max(map(len, contexts))
        padded = torch.tensor([c + [0] * (T - len(c)) for c in contexts], device=self.device)
        self.cache.prefill(slots, [len(c) for c in contexts])
        logits, _ = self.model(padded, kv_cache=self.cache)
        return [logits[i, len(c) - 1] for i, c in enumerate(contexts)]

    @staticmethod
    def _take(g, token):
        g.tokens.append(token)
        g.generated += 1
        g.emit(token)

    def _drop_finished(self):
        for slot in reversed(range(len(self.active))):  # from the end: what moves into a freed slot is checked
            g = self.active[slot]
            if g.finished():
                last = self.active.pop()
                if slot < len(self.active):
                    self.cache.move(len(self.active), slot)
                    self.active[slot] = last
                g.emit(None)

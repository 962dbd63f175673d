"""Serving many generations at once: continuous batching over one model. A one-token forward pass of a small model
costs about the same for one sequence as for sixteen, so every active generation sits in a slot of one shared key/value
cache, each at its own length, and one forward pass advances them all. A new request's prompt rides in that same pass,
in chunks of at most `prefill_chunk` tokens a pass: it neither waits for the running generations nor stalls them while
a long prompt goes through. A finished or abandoned generation frees its slot at once. Every sequence follows
generate_ids' rules (sampling.py): the same window, slid the same way, and sample_next with its own seeded generator,
so a request gets the tokens generate.py would give it, whatever else runs."""
import threading
from collections import deque
from itertools import accumulate

import torch

from sampling import gradients_off, sample_next
from transformer import attend


class SlotCache:
    """Keys and values of up to max_batch sequences, one slot each, each at its own length. The active ones hold slots
    0..n-1, so attention works on a view, not a gathered copy; when one leaves, the last moves into its slot.

    A forward pass takes the new tokens of slots 0..n-1 packed into one row (1, N), slot by slot: the matrix products
    see N tokens, not n rows padded to the longest. Only attention needs each token's own slot; it runs in two parts.
    Every slot's last new token (a decoding step's only one) attends as one batch of n single queries over the slots'
    view; the earlier tokens of prompt chunks, from the few slots that have them, attend as a second, padded batch."""

    def __init__(self, n_layer, max_batch, max_len):
        self.max_len, self.keys, self.values = max_len, [None] * n_layer, [None] * n_layer
        self.lengths = [0] * max_batch  # tokens cached in each slot

    def plan(self, feeds, device):
        """Make the next forward pass add feeds[i] tokens (>= 0, some > 0) to slot i, for slots 0..n-1, after its
        lengths[i] cached ones. Worked out once for every layer."""
        n, lengths = len(feeds), self.lengths
        ends = [length + f for length, f in zip(lengths, feeds)]  # each slot's length after the pass
        end = max(ends)
        self.feeds, self.device, self.write_rows = feeds, device, None  # write_rows: made at the first layer
        self.position = torch.tensor([lengths[i] + j for i, f in enumerate(feeds) for j in range(f)], device=device)
        self.last = [e - 1 for e in accumulate(feeds)]  # each slot's last new token in the pass (if it has one)
        # The single queries: a slot fed nothing gets a stand-in (token 0, shown key 0 alone), its output unused.
        self.single = None if feeds == [1] * n else torch.tensor([max(p, 0) for p in self.last], device=device)
        self.single_mask = None  # slots all at one length see every key
        if any(e != end for e in ends) or 0 in feeds:
            last_position = torch.tensor([e - 1 if f else 0 for e, f in zip(ends, feeds)], device=device)
            self.single_mask = (torch.arange(end, device=device) <= last_position.view(n, 1)).view(n, 1, 1, end)
        self.end = end
        # The earlier tokens of chunks, (m, T) padded; a pad repeats a real query, its output unused.
        chunked = [i for i, f in enumerate(feeds) if f > 1]
        self.order = None  # where each packed token's output lies in [single outputs, chunk outputs]
        if chunked:
            T, chunk_end = max(feeds[i] for i in chunked) - 1, max(ends[i] for i in chunked)
            first = [e - f for e, f in zip(accumulate(feeds), feeds)]  # each slot's first token in the pass
            self.chunk_slots = torch.tensor(chunked, device=device)
            self.chunk_queries = torch.tensor([first[i] + min(t, feeds[i] - 2) for i in chunked for t in range(T)],
                                              device=device)
            query_position = self.position[self.chunk_queries].view(len(chunked), T, 1)
            self.chunk_mask = (torch.arange(chunk_end, device=device) <= query_position).unsqueeze(1)  # (m,1,T,end)
            row = {i: r for r, i in enumerate(chunked)}
            self.order = torch.tensor([i if j == f - 1 else n + row[i] * T + j
                                       for i, f in enumerate(feeds) for j in range(f)], device=device)

    def positions(self, T, device):
        return self.position.view(1, -1)

    def attend(self, layer, q, k, v, kind):
        """Store the pass's new k, v (1, nh, N, hs) in their slots; the attention of its queries q (1, nh, N, hs)."""
        _, nh, N, hs = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_zeros(len(self.lengths), nh, self.max_len, hs)
            self.values[layer] = v.new_zeros(len(self.lengths), nh, self.max_len, hs)
        if self.write_rows is None:  # where each head's key of each new token goes, as rows of the buffers' (-1, hs)
            slots = [i for i, f in enumerate(self.feeds) for _ in range(f)]
            self.write_rows = ((torch.tensor(slots, device=self.device) * nh
                                + torch.arange(nh, device=self.device).view(nh, 1)) * self.max_len
                               + self.position).view(-1)  # (nh * N,), head by head
        keys, values = self.keys[layer], self.values[layer]
        keys.view(-1, hs).index_copy_(0, self.write_rows, k[0].reshape(nh * N, hs))
        values.view(-1, hs).index_copy_(0, self.write_rows, v[0].reshape(nh * N, hs))
        q, n, end = q[0], len(self.feeds), self.end  # (nh, N, hs)
        single = q if self.single is None else q.index_select(1, self.single)
        y = attend(single.transpose(0, 1).unsqueeze(2), keys[:n, :, :end], values[:n, :, :end], kind,
                   mask=self.single_mask).squeeze(2).transpose(0, 1)  # (nh, n, hs)
        if self.order is None:
            return y.unsqueeze(0)  # every slot fed one token: the outputs are in the pass's order already
        m, _, T, chunk_end = self.chunk_mask.shape
        chunk_q = q.index_select(1, self.chunk_queries).view(nh, m, T, hs).transpose(0, 1)  # (m, nh, T, hs)
        chunk_k, chunk_v = (b.narrow(2, 0, chunk_end).index_select(0, self.chunk_slots) for b in (keys, values))
        chunk_y = attend(chunk_q, chunk_k, chunk_v, kind, mask=self.chunk_mask).transpose(0, 1).flatten(1, 2)
        return torch.cat([y, chunk_y], dim=1).index_select(1, self.order).unsqueeze(0)

    def advance(self, T):
        for slot, fed in enumerate(self.feeds):
            self.lengths[slot] += fed

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
        self.start = None  # the model's context is tokens[start:], as in generate_ids; placed when it first runs
        self.fed = 0  # tokens[start:start + fed] are in its slot

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


# Prompt tokens a forward pass takes, over all new requests. A longer prompt is split over several passes, each of which
# also gives every running generation its next token; a larger chunk lets a burst of requests in at once (on the chat
# load, 256 kept the time to first token of prefilling whole prompts at once; 64 doubled its p95: RESULTS.md).
PREFILL_CHUNK = 256


class BatchedGenerator:
    """A thread that runs every submitted Generation, up to max_batch of them in one forward pass."""

    def __init__(self, model, max_batch=16, prefill_chunk=PREFILL_CHUNK):
        self.model, self.max_batch, self.prefill_chunk = model, max_batch, prefill_chunk
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
        """One forward pass: every active generation's newest token, and the next chunk of the prompts not yet in
        the cache; a token for each generation whose whole context is then in its slot."""
        self._drop_finished()
        if not self.active:
            return
        feeds = self._feeds()
        ids = torch.tensor([[token for feed in feeds for token in feed]], device=self.device)
        self.cache.plan([len(feed) for feed in feeds], self.device)
        logits, _ = self.model(ids, kv_cache=self.cache)
        ready = [i for i, g in enumerate(self.active) if feeds[i] and g.start + g.fed == len(g.tokens)]
        last = logits[0, [self.cache.last[i] for i in ready]].float().cpu()  # (len(ready), vocab)
        for i, token in zip(ready, self._next_tokens(ready, last)):
            self._take(self.active[i], token)
        self._drop_finished()

    def _feeds(self):
        """The tokens each active generation feeds this pass (maybe none, while other prompts use up the chunk)."""
        feeds, chunk = [], self.prefill_chunk
        for slot, g in enumerate(self.active):
            if g.start is None:  # new: its last block tokens
                g.start, g.fed = max(0, len(g.tokens) - self.block), 0
                self.cache.lengths[slot] = 0
            elif len(g.tokens) - g.start > self.block:  # a full window keeps its newest half, its slot starts over
                g.start, g.fed = len(g.tokens) - max(1, self.block // 2), 0
                self.cache.lengths[slot] = 0
            unfed = g.tokens[g.start + g.fed:]
            feed = unfed if len(unfed) == 1 else unfed[:chunk]  # a decoding step, or a piece of a prompt
            chunk -= len(feed) if len(unfed) > 1 else 0
            g.fed += len(feed)
            feeds.append(feed)
        return feeds

    def _next_tokens(self, ready, logits):
        """The next token of each generation in slots `ready`, from its row of logits; the greedy ones share one masked
        argmax."""
        generations = [self.active[i] for i in ready]
        greedy, picks = [r for r, g in enumerate(generations) if g.settings.temperature == 0], {}
        if greedy:
            banned = torch.stack([generations[r].banned_mask(logits.size(-1)) for r in greedy])
            picks = dict(zip(greedy, logits[greedy].masked_fill(banned, float("-inf")).argmax(dim=-1).tolist()))
        return [picks[r] if r in picks else sample_next(logits[r], g.settings, g.generator)
                for r, g in enumerate(generations)]

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

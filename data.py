"""From a text file to batches of token ids. The corpus is tokenized once, in blocks, into a flat uint16/uint32 file
that training reads through a numpy memmap: re-runs skip tokenization, and a corpus larger than RAM never has to sit
in memory as Python lists."""
import hashlib
import json
import os

import numpy as np
import torch

from errors import UserError
from files import atomic_write, cache_dir, check_input_file
from jsonfile import read_json

BLOCK_CHARS = 1 << 20  # read and tokenize the corpus a megabyte of text at a time


def iter_text_blocks(path):
    """Yield the file's text in blocks of about BLOCK_CHARS that end at a line break; UserError for a missing,
    unreadable or non-UTF-8 file."""
    check_input_file(path, "data file")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            carry = ""
            for block in iter(lambda: f.read(BLOCK_CHARS), ""):
                block = carry + block
                cut = block.rfind("\n") + 1  # keep a partial last line for the next block
                carry = block[cut:]
                if cut:
                    yield block[:cut]
            if carry:
                yield carry
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text ({e.reason} in a block near byte {e.start})")
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror}")


def corpus_chars(path):
    """The set of characters in the file, and how many characters it has."""
    chars, n = set(), 0
    for block in iter_text_blocks(path):
        chars.update(block)
        n += len(block)
    return chars, n


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Hashed into every token cache's name: a cache stored any other way (an older b_lm's) is never read as this one.
CACHE_LAYOUT = "token ids in native byte order; the JSON beside them holds n_tokens, their count"


def tokenize_to_memmap(path, tokenizer):
    """Tokenize the file once into the cache and return its tokens, a read-only memmap. The cache is named by the
    hashes of the data, the tokenizer and CACHE_LAYOUT, so a change to any of them makes a new one; it is written
    atomically, and the token count beside it must match its size, so a damaged cache is made again, never read."""
    check_input_file(path, "data file")
    spec = json.dumps([CACHE_LAYOUT, tokenizer.to_dict()], sort_keys=True).encode()
    key = f"{file_sha256(path)[:16]}-{hashlib.sha256(spec).hexdigest()[:16]}"
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    bin_path = os.path.join(cache_dir(), f"{key}.{np.dtype(dtype).name}")
    if (tokens := _cached_tokens(bin_path, dtype)) is not None:
        return tokens
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        n_tokens = 0
        with atomic_write(bin_path) as out:
            for block in iter_text_blocks(path):
                try:
                    ids = tokenizer.encode(block)
                except UserError as e:
                    raise UserError(f"data file {path}: {e}. A character model knows only the characters it was "
                                    f"trained on: remove them, or train a model on this text") from None
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                n_tokens += len(ids)
        with atomic_write(bin_path + ".json", "w") as f:
            json.dump({"n_tokens": n_tokens}, f)
    except OSError as e:
        raise UserError(f"cannot write the token cache {bin_path} ({e.strerror or e}): "
                        f"set B_LM_CACHE to a writable folder") from None
    return _cached_tokens(bin_path, dtype)


def _cached_tokens(bin_path, dtype):
    """The cached tokens, or None when the cache is missing or does not match the count recorded beside it."""
    try:
        n_tokens = read_json(bin_path + ".json", "token cache")["n_tokens"]
        if type(n_tokens) is not int or os.path.getsize(bin_path) != n_tokens * np.dtype(dtype).itemsize:
            return None
    except (UserError, OSError, KeyError, TypeError):  # missing or damaged: tokenize again
        return None
    return np.memmap(bin_path, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype)


def corpus_batches(path, tokenizer, block_size, val_fraction, seed, data_order="epochs"):
    """The corpus at path, tokenized (and cached), split into train and val Batches."""
    tokens = tokenize_to_memmap(path, tokenizer)
    if len(tokens) == 0:
        raise UserError(f"data file {path} is empty: give it some text to learn from")
    return Batches(tokens, block_size, val_fraction, seed, data_order)


# How training blocks are drawn. 'epochs': pass after pass over the training split, each cut into back-to-back blocks
# from a random offset and read in a random order, so every token is read as often as every other. 'random': each
# block at a random offset, drawn with replacement (nanoGPT's way): over a run some stretches are read twice as often
# as others, and on a corpus read many times the model learns those by heart (RESULTS.md, 2026-12-07, last).
DATA_ORDERS = ("epochs", "random")


class Passes:
    """Items handed out pass by pass: new_pass() gives one pass's items in a random order, and each pass is used up
    before the next begins. What is left of the pass is the state a checkpoint keeps, beside the generator new_pass
    draws from. Batches hands out block starts this way, tasks.ChatRows its train questions."""

    def __init__(self, new_pass):
        self.new_pass, self.left = new_pass, torch.zeros(0, dtype=torch.int64)

    def take(self, count):
        """The next count items, as ints; a pass that runs out midway is followed by the next."""
        while len(self.left) < count:
            self.left = torch.cat([self.left, self.new_pass()])
        taken, self.left = self.left[:count], self.left[count:]
        return taken.tolist()

    def put_back(self, item):
        """item, taken but not used, comes next."""
        self.left = torch.cat([torch.tensor([item]), self.left])

    def restore(self, left, largest, problem):
        """Go on with what a checkpoint saved of a pass (None, from before the passes: a fresh one); ValueError(problem)
        unless it is a 1-D int64 tensor of items from 0 to largest."""
        left = torch.zeros(0, dtype=torch.int64) if left is None else left
        if not (isinstance(left, torch.Tensor) and left.dtype == torch.int64 and left.dim() == 1
                and (len(left) == 0 or 0 <= int(left.min()) and int(left.max()) <= largest)):
            raise ValueError(problem)
        self.left = left.clone()


class Batches:
    """Train/val split of a token stream, training blocks drawn in data_order (DATA_ORDERS), fixed val windows. The
    last val_fraction is validation, split here and only here, for training, fine-tuning and evaluation alike. The
    draws come from a generator of our own; its state and the blocks left in the epoch (draw_state) go into the
    checkpoint, so a resumed run draws the same blocks."""

    def __init__(self, tokens, block_size, val_fraction, seed, data_order="epochs"):
        if data_order not in DATA_ORDERS:
            raise ValueError(f"unknown data order {data_order!r}: choose one of {', '.join(DATA_ORDERS)}")
        split = len(tokens) - int(len(tokens) * val_fraction)
        self.train, self.val = tokens[:split], tokens[split:]
        self.block_size, self.data_order = block_size, data_order
        self.generator = torch.Generator().manual_seed(seed)
        self.passes = Passes(self._new_epoch)  # with data_order 'epochs': the block starts, pass by pass
        need = block_size + 1
        if len(self.train) < need:
            raise UserError(f"the training split has {len(self.train)} tokens; a context of {block_size} tokens "
                            f"needs at least {need}: use a larger corpus (or a model with a smaller --block-size)")
        if val_fraction > 0 and len(self.val) < need:
            raise UserError(f"the validation split has {len(self.val)} tokens; a context of {block_size} tokens "
                            f"needs at least {need}: use a larger corpus (or train with a larger --val-fraction "
                            f"or a smaller --block-size)")

    @property
    def last_start(self):
        """The last offset a training block can start at: it needs block_size + 1 tokens (inputs and next tokens)."""
        return len(self.train) - self.block_size - 1

    def _stack(self, stream, starts):
        T = self.block_size
        rows = torch.from_numpy(np.stack([np.asarray(stream[s: s + T + 1], dtype=np.int64) for s in starts]))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # inputs and their next tokens, (B, T) each

    def train_batches(self, batch_size, n):
        """n micro-batches of training blocks, drawn in one go."""
        starts = self._draw_starts(n * batch_size)
        return [self._stack(self.train, starts[i * batch_size: (i + 1) * batch_size]) for i in range(n)]

    def _draw_starts(self, count):
        if self.data_order == "random":
            return torch.randint(0, self.last_start + 1, (count,), generator=self.generator).tolist()
        return self.passes.take(count)

    def _new_epoch(self):
        """The block starts of one pass, in random order: back to back from a random offset below block_size, which
        moves the seams between blocks from one epoch to the next (the few tokens before the offset and after the
        last whole block wait for another epoch)."""
        offset = int(torch.randint(0, min(self.block_size, self.last_start + 1), (1,), generator=self.generator))
        starts = torch.arange(offset, self.last_start + 1, self.block_size)
        return starts[torch.randperm(len(starts), generator=self.generator)]

    def draw_state(self):
        """What a checkpoint keeps so that a resumed run draws the same blocks: {'batches', 'batch_order'}."""
        return {"batches": self.generator.get_state(), "batch_order": self.passes.left.clone()}

    def restore_draws(self, state):
        """Continue the draws a draw_state saved; ValueError if they do not fit this corpus. A checkpoint from before
        the epochs has no 'batch_order': its run goes on with a fresh epoch."""
        self.passes.restore(state.get("batch_order"), self.last_start,
                            "its blocks left in the epoch do not fit the training split")
        self.generator.set_state(state["batches"])

    def val_batches(self, batch_size, max_tokens=None):
        """Batches of non-overlapping val windows, evenly spread when capped to max_tokens."""
        n = (len(self.val) - 1) // self.block_size
        keep = max(1, min(n, max_tokens // self.block_size)) if max_tokens else n
        starts = [(i * n // keep) * self.block_size for i in range(keep)]
        for i in range(0, len(starts), batch_size):
            yield self._stack(self.val, starts[i: i + batch_size])

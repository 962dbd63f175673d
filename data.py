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


def corpus_batches(path, tokenizer, block_size, val_fraction, seed):
    """The corpus at path, tokenized (and cached), split into train and val Batches."""
    tokens = tokenize_to_memmap(path, tokenizer)
    if len(tokens) == 0:
        raise UserError(f"data file {path} is empty: give it some text to learn from")
    return Batches(tokens, block_size, val_fraction, seed)


class Batches:
    """Train/val split of a token stream, random training blocks, fixed val windows. The last val_fraction is
    validation, split here and only here, for training, fine-tuning and evaluation alike. Training blocks start at
    random offsets from a generator of our own, whose state the checkpoint keeps: a resumed run draws the same ones."""

    def __init__(self, tokens, block_size, val_fraction, seed):
        split = len(tokens) - int(len(tokens) * val_fraction)
        self.train, self.val = tokens[:split], tokens[split:]
        self.block_size = block_size
        self.generator = torch.Generator().manual_seed(seed)
        need = block_size + 1
        if len(self.train) < need:
            raise UserError(f"the training split has {len(self.train)} tokens; a context of {block_size} tokens "
                            f"needs at least {need}: use a larger corpus (or a model with a smaller --block-size)")
        if val_fraction > 0 and len(self.val) < need:
            raise UserError(f"the validation split has {len(self.val)} tokens; a context of {block_size} tokens "
                            f"needs at least {need}: use a larger corpus (or train with a larger --val-fraction "
                            f"or a smaller --block-size)")

    def _stack(self, stream, starts):
        T = self.block_size
        rows = torch.from_numpy(np.stack([np.asarray(stream[s: s + T + 1], dtype=np.int64) for s in starts]))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # inputs and their next tokens, (B, T) each

    def train_batches(self, batch_size, n):
        """n micro-batches of random training blocks, drawn in one go."""
        high = len(self.train) - self.block_size - 1
        starts = torch.randint(0, high + 1, (n * batch_size,), generator=self.generator).tolist()
        return [self._stack(self.train, starts[i * batch_size: (i + 1) * batch_size]) for i in range(n)]

    def val_batches(self, batch_size, max_tokens=None):
        """Batches of non-overlapping val windows, evenly spread when capped to max_tokens."""
        n = (len(self.val) - 1) // self.block_size
        keep = max(1, min(n, max_tokens // self.block_size)) if max_tokens else n
        starts = [(i * n // keep) * self.block_size for i in range(keep)]
        for i in range(0, len(starts), batch_size):
            yield self._stack(self.val, starts[i: i + batch_size])

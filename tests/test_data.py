"""data.py: the token cache never reads what an earlier b_lm left in its folder as today's layout, and the epochs
draw every training block once per pass, in an order a checkpoint can continue."""
import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch

import data
from tokenizer import CharTokenizer


def test_a_cache_of_an_earlier_layout_is_never_read(tmp_path, small_corpus, monkeypatch):
    monkeypatch.setenv("B_LM_CACHE", str(tmp_path))
    tokenizer = CharTokenizer(open(small_corpus, encoding="utf-8").read())
    # Earlier versions named the cache by the data and the tokenizer alone, with and without a ".v2." infix.
    # Plant such files holding wrong tokens, with a count that matches their size.
    old_key = (f"{data.file_sha256(small_corpus)[:16]}-"
               f"{hashlib.sha256(json.dumps(tokenizer.to_dict(), sort_keys=True).encode()).hexdigest()[:16]}")
    wrong = np.zeros(10, dtype=np.uint16)
    for name in (f"{old_key}.uint16", f"{old_key}.v2.uint16"):
        (tmp_path / name).write_bytes(wrong.tobytes())
        (tmp_path / f"{name}.json").write_text(json.dumps({"n_tokens": len(wrong)}))
    tokens = data.tokenize_to_memmap(small_corpus, tokenizer)
    assert tokens.tolist() == tokenizer.encode(open(small_corpus, encoding="utf-8", newline="").read())
    assert len(list(tmp_path.iterdir())) == 6  # today's cache beside the planted ones, none of them touched


def test_an_epoch_reads_every_block_of_the_training_split_once():
    b = data.Batches(np.arange(900), 16, 0.1, seed=3)  # 810 train tokens, whose values are their offsets
    drawn = []
    for x, y in b.train_batches(25, 3):  # 75 blocks: the first epoch (49 or 50 of them) ends mid-batch
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)  # next tokens
        drawn += x[:, 0].tolist()
    blocks = list(range(drawn[0] % 16, b.last_start + 1, 16))  # back to back from one offset
    first, second = drawn[:len(blocks)], drawn[len(blocks):]
    assert sorted(first) == blocks and first != blocks  # each block once, in a random order
    assert len(set(second)) == len(second) and len({s % 16 for s in second}) == 1  # the next epoch: its own seams


def test_the_random_order_draws_with_replacement_as_before():
    b = data.Batches(np.arange(900), 16, 0.1, seed=3, data_order="random")
    starts = [int(s) for x, _ in b.train_batches(50, 4) for s in x[:, 0]]
    expected = torch.randint(0, b.last_start + 1, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    assert starts == expected and max(Counter(starts).values()) > 1  # nanoGPT's draw: some blocks twice


def test_a_training_split_of_one_block_still_draws():
    b = data.Batches(np.arange(17), 16, 0.0, seed=1)  # exactly block_size + 1 tokens: one block, at 0
    x, y = b.train_batches(3, 1)[0]
    assert x[:, 0].tolist() == [0, 0, 0] and y[:, -1].tolist() == [16, 16, 16]


def test_saved_draws_continue_exactly_and_damaged_ones_are_refused():
    b = data.Batches(np.arange(900), 16, 0.1, seed=5)
    b.train_batches(7, 3)  # mid-epoch
    state = b.draw_state()
    ahead = [x.tolist() for x, _ in b.train_batches(7, 20)]  # past the epoch's end
    again = data.Batches(np.arange(900), 16, 0.1, seed=99)
    again.restore_draws(state)
    assert [x.tolist() for x, _ in again.train_batches(7, 20)] == ahead
    for order in (torch.tensor([b.last_start + 1]), torch.tensor([-1]), torch.tensor([0.0]), [3]):
        with pytest.raises(ValueError, match="do not fit the training split"):
            again.restore_draws({**state, "batch_order": order})

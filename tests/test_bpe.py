"""bpe.py against a slow obvious trainer and against tiktoken as the encoding oracle."""
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the modules live flat at the top of the repo

import bpe  # noqa: E402
from errors import UserError  # noqa: E402
from tokenizer import SPECIAL_TOKENS, StreamDecoder  # noqa: E402
from tokenizer_io import tokenizer_from_dict  # noqa: E402

DATA = (ROOT / "data.txt").read_text(encoding="utf-8")
SMALL = DATA[:150_000]  # enough for 512 tokens, quick to train on

# Text that stresses the split pattern: whitespace runs, digits, emoji, contractions.
TRICKY = (" \t\n\r\n  0123456789 abcXYZ éüß 中文 😀👍🏽 'sS'LL !?.,<|> "
          "\u00a0\u2028\u3000\x85\x1c")
texts = st.one_of(st.text(max_size=200), st.text(alphabet=TRICKY, max_size=200))
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok():
    return bpe.train_bpe(SMALL, 512)


@pytest.fixture(scope="module")
def oracle(tok):
    return tiktoken.Encoding(name="b_lm_test", pat_str=tok.pattern,
                             mergeable_ranks=tok.mergeable_ranks(),
                             special_tokens=tok.special_tokens)


def get_stats(ids, counts=None, weight=1):
    """Count adjacent pairs, each occurrence adding `weight`.

    [1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def naive_merges(counts, n_merges):
    """The obvious O(merges x corpus) trainer with learn_merges's rule:
    highest count first, ties to the smallest pair."""
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    merges = []
    while len(merges) < n_merges:
        stats = {}
        for w, f in zip(words, freqs):
            get_stats(w, stats, f)
        if not stats:
            break
        _, pair = min((-c, pair) for pair, c in stats.items())
        merges.append(pair)
        words = [bpe.merge(w, pair, 255 + len(merges)) for w in words]
    return merges


# --- helpers: the docstring examples


def test_helpers():
    assert get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert bpe.merge([7, 7, 7], (7, 7), 8) == [8, 7]
    assert bpe.count_chunks("the cat the") == Counter({"the": 1, " cat": 1, " the": 1})
    assert bpe.find_cut(b"one\ntwo\n  three") == 8
    assert bpe.find_cut("a\n中文\n".encode()) == 2
    assert bpe.find_cut(b"one\n\n") == 0
    assert bpe.merges_for_vocab_size(4096) == 3836


# --- training


def test_incremental_trainer_matches_naive():
    counts = bpe.count_chunks(DATA[:20_000])
    assert bpe.learn_merges(counts, 300) == naive_merges(counts, 300)


@fast
@given(st.text(alphabet="ab \n", max_size=60), st.integers(0, 30))
def test_incremental_trainer_matches_naive_on_random_text(text, n):
    # a tiny alphabet makes runs like 'aaaa' and 'abab', where merge sites touch
    counts = bpe.count_chunks(text, pattern=r"\S+|\s+")
    assert bpe.learn_merges(counts, n) == naive_merges(counts, n)


def test_training_is_deterministic():
    counts = bpe.count_chunks(DATA[:50_000])
    shuffled = Counter(dict(reversed(list(counts.items()))))  # other dict order
    first = bpe.learn_merges(counts, 200)
    assert bpe.learn_merges(counts, 200) == first
    assert bpe.learn_merges(shuffled, 200) == first


def test_vocab_layout(tok):
    assert len(tok.merges) == 512 - 256 - len(SPECIAL_TOKENS)
    assert tok.vocab_size == 512
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert sorted(tok.special_tokens.values()) == list(range(508, 512))
    assert len(set(tok.mergeable_ranks())) == 508  # every token's bytes are distinct


def test_runs_out_of_pairs():
    t = bpe.train_bpe("ab", 4096)
    assert t.merges == [(97, 98)] and t.vocab_size == 256 + 1 + len(SPECIAL_TOKENS)


def test_training_errors():
    with pytest.raises(UserError, match="too small"):
        bpe.train_bpe("hello", 259)
    with pytest.raises(UserError, match="empty"):
        bpe.train_bpe("", 300)
    with pytest.raises(UserError, match="not a valid regex"):
        bpe.train_bpe("hello", 300, pattern="(")


# --- reading a corpus in blocks


@pytest.mark.parametrize("block_size", [1, 7, 4096])
def test_file_counts_match_whole_text(tmp_path, block_size):
    text = DATA[:20_000] + "\n\n  indented\r\n\tx\n \n\ny" + TRICKY
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert bpe.count_file_chunks(path, block_size=block_size) == bpe.count_chunks(text)


@fast
@given(st.text(alphabet=TRICKY, max_size=300), st.integers(1, 50))
def test_file_counts_match_whole_text_on_random_text(tmp_path_factory, text, block_size):
    path = tmp_path_factory.mktemp("c") / "corpus.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert bpe.count_file_chunks(path, block_size=block_size) == bpe.count_chunks(text)


def test_non_utf8_reports_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n" * 100 + b"caf\xe9\n" + b"more\n")
    for block_size in (16, 1 << 20):
        with pytest.raises(UserError, match="byte offset 1003"):
            bpe.count_file_chunks(path, block_size=block_size)


# --- encoding: tiktoken is the oracle


def test_matches_tiktoken_on_data(tok, oracle):
    assert tok.encode(DATA) == oracle.encode_ordinary(DATA)


@fast
@given(texts)
def test_matches_tiktoken_on_random_text(tok, oracle, text):
    assert tok.encode(text) == oracle.encode_ordinary(text)


@fast
@given(texts)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens(tok, oracle):
    text = "hi<|user|>there<|endoftext|>"
    user, eot = tok.special_tokens["<|user|>"], tok.special_tokens["<|endoftext|>"]
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("hi") + [user] + tok.encode("there") + [eot]
    assert ids == oracle.encode(text, allowed_special="all")
    # allowed only <|user|>: the other one is plain text, never an error
    ids = tok.encode(text, allowed_special={"<|user|>"})
    assert ids == tok.encode("hi") + [user] + tok.encode("there<|endoftext|>")
    # not allowed (the default): plain text, like tiktoken's disallowed_special=()
    ids = tok.encode(text)
    assert ids == oracle.encode(text, disallowed_special=())
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    with pytest.raises(ValueError):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_lone_surrogate_encodes_like_tiktoken(tok, oracle):
    assert tok.encode("a\ud800b") == oracle.encode_ordinary("a\ud800b")


# --- decoding


@fast
@given(st.lists(st.integers(-2**70, 2**70) | st.integers(0, 520)))
def test_decode_never_raises(tok, ids):
    assert isinstance(tok.decode(ids), str)


def test_decode_replaces_bad_bytes_and_unknown_ids(tok):
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # half of a 3-byte character
    assert tok.decode([104, 10**6, 105, -1]) == "h\ufffdi\ufffd"


@fast
@given(texts)
def test_stream_decoder(tok, text):
    ids = tok.encode(text, allowed_special="all")
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces if "\ufffd" not in text)


# --- storage


def test_to_dict_is_plain_and_round_trips(tok):
    d = tok.to_dict()
    assert d["kind"] == "bpe" and d["format_version"] == bpe.FORMAT_VERSION
    assert json.loads(json.dumps(d)) == d  # plain values only
    again = tokenizer_from_dict(d)
    assert again.merges == tok.merges and again.encode(SMALL[:5000]) == tok.encode(SMALL[:5000])


def test_save_load(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    again = bpe.BPETokenizer.load(path)
    assert again.to_dict() == tok.to_dict()
    assert json.loads(path.read_text()) == tok.to_dict()
    assert os.listdir(tmp_path) == ["tok.json"]  # no temporary file left


def test_failed_save_keeps_old_file(tok, tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserError, match="No space left"):
        tok.save(path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["tok.json"]


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    ("{not json", "not a valid tokenizer JSON"),
    (b"\xff\xfe", "not a valid tokenizer JSON"),
    ('{"kind": "char"}', "not a BPE tokenizer"),
    ('{"kind": "bpe", "format_version": 99}', "version 99"),
    ('{"kind": "bpe", "format_version": 1, "special_tokens": '
     + json.dumps(list(SPECIAL_TOKENS)) + ', "pattern": ".", "merges": [[256, 1]]}', "merge #0"),
])
def test_load_errors(tmp_path, content, message):
    path = tmp_path / "tok.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as e:
        bpe.BPETokenizer.load(path)
    assert "\n" not in str(e.value)

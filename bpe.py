"""Byte-level BPE: learn merges from a corpus, encode text to ids and back. Ids: the 256 single bytes, then one token
per learned merge in the order learned, then tokenizer.SPECIAL_TOKENS; a requested vocab size counts the special tokens
too (4096 means 4092 byte and merge tokens). Text is first cut into chunks by a regex (GPT-4's pattern by default), and
merges never cross a chunk boundary. A merge's id doubles as its rank: encoding merges the lowest id first, so it
replays training on each chunk.

Our vocabulary is also a valid tiktoken `mergeable_ranks`, and the tests hold our ids against tiktoken's. Why: in this
replay, whenever a stretch of bytes ends up covered exactly by some tokens, those tokens are the ones the stretch would
get on its own (a merge reaching across its edge would have made a token that crosses it). So every token's bytes come
from one merge only, and "merge the pair whose joined bytes rank lowest" (tiktoken) picks the same pair as "merge the
pair with the lowest rank" (us)."""
import heapq
import json
import os
from collections import Counter, defaultdict
from itertools import repeat

import regex

from errors import UserError
from files import atomic_write
from jsonfile import read_json
from tokenizer import SPECIAL_TOKENS, Tokenizer, check_special_tokens

# The split pattern of tiktoken's cl100k_base (GPT-4): contractions, words with one leading non-letter, numbers of up
# to 3 digits, punctuation runs, newlines, and whitespace that leaves one space for the following word.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
FORMAT_VERSION = 1
N_SPECIAL = len(SPECIAL_TOKENS)
NO_MERGE = 1 << 62  # rank of a pair that has no merge
# Larger than any tokenizer in use (GPT-4's has 100,277 tokens), and within what every trainer's ids hold.
MAX_VOCAB_SIZE = 1_000_000


def compile_pattern(pattern):
    try:
        compiled = regex.compile(pattern)
    except (regex.error, TypeError) as e:
        raise UserError(f"the split pattern is not a valid regex ({e}): {pattern!r}") from None
    if compiled.match("") is not None:
        raise UserError(f"the split pattern {pattern!r} matches empty text, so it would cut text into nothing: "
                        f"every alternative must take at least one character")
    return compiled


def count_chunks(text, pattern=GPT4_PATTERN):
    """Count the regex chunks of text: 'the cat the' -> Counter({'the': 1, ' cat': 1, ' the': 1})"""
    return Counter(compile_pattern(pattern).findall(text))


def merge(ids, pair, idx):
    """Replace each occurrence of pair by idx, left to right, without overlaps:
    ([1, 2, 3, 1, 2], (1, 2), 4) -> [4, 3, 4];  ([7, 7, 7], (7, 7), 8) -> [8, 7]"""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# A cut right after a newline is a chunk boundary of GPT4_PATTERN when the whitespace that follows holds no other
# newline and ends in a visible character: the chunk holding the newline ends at the last newline of its whitespace
# run, and no alternative carries a newline into the next word. So counting block by block gives exactly the counts
# of the whole text. (Another --pattern may count a few chunks differently at the cuts.)
_SAFE_AFTER_NEWLINE = regex.compile(r"[^\S\r\n]*\S")


def find_cut(buf):
    """Index just past the last newline in buf that is safe to cut at, or 0:
    b'one\\ntwo\\n  three' -> 8;  b'one\\n\\n' -> 0 (what follows is not known yet)"""
    end = len(buf)
    while True:
        i = buf.rfind(b"\n", 0, end)
        if i < 0:
            return 0
        # 64 bytes decide it unless they are all whitespace (then cut elsewhere)
        if _SAFE_AFTER_NEWLINE.match(buf[i + 1:i + 65].decode("utf-8", "ignore")):
            return i + 1
        end = i


def count_file_chunks(path, pattern=GPT4_PATTERN, block_size=1 << 20, progress=None):
    """Count the chunks of a UTF-8 file, reading it block by block. Memory grows with the number of distinct
    chunks, not with the file size (a single line longer than memory is the one thing it cannot handle)."""
    split = compile_pattern(pattern).findall
    counts = Counter()
    try:
        total = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read the corpus {path}: {e.strerror}") from None
    with f:
        buf, offset = b"", 0  # offset: file position of buf[0]
        while True:
            block = f.read(block_size)
            buf += block
            cut = find_cut(buf) if block else len(buf)
            if cut:
                try:
                    text = buf[:cut].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path} is not UTF-8 text: bad byte 0x{buf[e.start]:02x} "
                                    f"at byte offset {offset + e.start}") from None
                chunks = split(text)
                if sum(map(len, chunks)) != len(text):
                    raise UserError(f"the split pattern {pattern!r} skips parts of {path}: a tokenizer with it "
                                    f"would silently drop them; it must match every character of the text")
                counts.update(chunks)
                buf, offset = buf[cut:], offset + cut
            if progress:
                progress(offset + len(buf), total)
            if not block:
                return counts


def learn_merges(counts, n_merges, progress=None):
    """Learn up to n_merges merges from {chunk: count}: [(a, b), ...], fewer if no pair is left. Each step merges the
    most frequent adjacent pair, ties going to the smallest pair of ids. Rather than recount every pair after every
    merge, we keep the pair counts up to date: only the words (distinct chunks) that hold the merged pair change, and
    only the pairs next to each merge site. A max-heap of (-count, pair) finds the best pair; a stale entry (its count
    dropped) is re-pushed with its current count when it surfaces."""
    words = [list(chunk.encode("utf-8")) for chunk in counts]
    freqs = list(counts.values())
    stats = defaultdict(int)  # pair -> weighted count over all words
    where = defaultdict(set)  # pair -> ids of words that held it (maybe no longer)
    for wi, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            stats[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in stats.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        neg, pair = heapq.heappop(heap)
        count = stats[pair]
        if count != -neg:  # stale: the count dropped since this was pushed
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        idx = 256 + len(merges)
        merges.append(pair)
        for new_pair in _merge_words(words, freqs, where.pop(pair), pair, idx, stats, where):
            if stats[new_pair] > 0:  # adjacent sites can book a pair and take it back
                heapq.heappush(heap, (-stats[new_pair], new_pair))
        if progress:
            progress(len(merges), n_merges)
    return merges


def _merge_words(words, freqs, word_ids, pair, idx, stats, where):
    """Merge pair -> idx in the given words, updating stats and where in place; the pairs that gained count (they
    all contain idx, so they are new to the heap). At each merge site x a b y, the pairs (x, a), (a, b), (b, y) lose
    the word's count and (x, idx), (idx, y) gain it. When sites are adjacent (a b a b), the second site's x is the
    idx just made, which books the middle pair correctly as (idx, idx)."""
    a, b = pair
    new_pairs = set()
    for wi in word_ids:
        w, f = words[wi], freqs[wi]
        n, i, last, out = len(w), 0, 0, []
        while i < n - 1:
            try:  # jump to the next a (list.index runs at C speed)
                i = w.index(a, i, n - 1)
            except ValueError:
                break
            if w[i + 1] != b:
                i += 1
                continue
            out += w[last:i]
            stats[pair] -= f
            if out:
                x = out[-1]
                stats[x, a] -= f
                stats[x, idx] += f
                where[x, idx].add(wi)
                new_pairs.add((x, idx))
            if i + 2 < n:
                y = w[i + 2]
                stats[b, y] -= f
                stats[idx, y] += f
                where[idx, y].add(wi)
                new_pairs.add((idx, y))
            out.append(idx)
            i = last = i + 2
        if last:  # merged at least once (where also lists words that no longer hold the pair)
            words[wi] = out + w[last:]
    return new_pairs


def merges_for_vocab_size(vocab_size):
    """How many merges make a vocabulary of vocab_size (specials included): 4096 -> 3836."""
    if vocab_size < 256 + N_SPECIAL:
        raise UserError(f"vocab size {vocab_size} is too small: it must be at least "
                        f"{256 + N_SPECIAL} (256 bytes + {N_SPECIAL} special tokens)")
    if vocab_size > MAX_VOCAB_SIZE:
        raise UserError(f"vocab size {vocab_size} is too large: at most {MAX_VOCAB_SIZE:,}")
    return vocab_size - 256 - N_SPECIAL


def train_bpe(corpus, vocab_size, pattern=GPT4_PATTERN, progress=None):
    """Train a BPETokenizer on text or on {chunk: count} from count_file_chunks."""
    n_merges = merges_for_vocab_size(vocab_size)
    counts = count_chunks(corpus, pattern) if isinstance(corpus, str) else corpus
    if not counts:
        raise UserError("the corpus is empty: give at least a few words of text")
    return BPETokenizer(learn_merges(counts, n_merges, progress), pattern)


class BPETokenizer(Tokenizer):
    """Byte-level BPE with regex pre-splitting and the shared special tokens."""

    kind = "bpe"

    def __init__(self, merges, pattern=GPT4_PATTERN):
        self.merges = [tuple(pair) for pair in merges]
        self.pattern = pattern
        self._split = compile_pattern(pattern).findall
        # (a, b) -> id of the merged token; lower id = learned earlier = merges first
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        token_bytes = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            token_bytes.append(token_bytes[a] + token_bytes[b])
        self._token_ids = {b: i for i, b in enumerate(token_bytes)}  # byte and merge tokens, no specials
        self._set_vocab(token_bytes)
        self._cache = {}  # chunk -> ids; text repeats its chunks a lot

    def encode_ordinary(self, text):
        """Text -> ids, ignoring special tokens."""
        cache, ids = self._cache, []
        if len(cache) > 200_000:  # bound the memory on endless streams of new text
            cache.clear()
        for chunk in self._split(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                chunk_ids = cache[chunk] = self._encode_chunk(chunk)
            ids += chunk_ids
        return ids

    def _encode_chunk(self, chunk):
        """Apply merges to one chunk, lowest rank first, until none applies."""
        try:
            chunk_bytes = chunk.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: encode them as U+FFFD, as tiktoken does
            chunk_bytes = chunk.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")
        whole = self._token_ids.get(chunk_bytes)
        if whole is not None:  # a chunk that is a token encodes as it (see the top)
            return [whole]
        ids, rank, merges = list(chunk_bytes), self.ranks.get, self.merges
        while len(ids) >= 2:
            # the lowest rank among adjacent pairs, NO_MERGE where none exists
            idx = min(map(rank, zip(ids, ids[1:]), repeat(NO_MERGE)))
            if idx == NO_MERGE:
                break
            ids = merge(ids, merges[idx - 256], idx)
        return ids

    def mergeable_ranks(self):
        """{token bytes: id} for the byte and merge tokens, as tiktoken takes it."""
        return dict(self._token_ids)

    def to_dict(self):
        return {"kind": self.kind, "format_version": FORMAT_VERSION, "pattern": self.pattern,
                "special_tokens": list(SPECIAL_TOKENS), "merges": [list(pair) for pair in self.merges]}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("kind") != cls.kind:
            raise UserError("not a BPE tokenizer (its 'kind' is not 'bpe')")
        if type(d.get("format_version")) is not int or d["format_version"] != FORMAT_VERSION:
            raise UserError(f"BPE tokenizer format version {d.get('format_version')!r} is not "
                            f"supported (this code reads version {FORMAT_VERSION})")
        check_special_tokens(d.get("special_tokens"))
        merges, pattern = d.get("merges"), d.get("pattern")
        if not isinstance(pattern, str) or not isinstance(merges, list):
            raise UserError("the tokenizer lacks its 'pattern' or 'merges'")
        for i, pair in enumerate(merges):  # a merge may only combine tokens that exist before it
            if type(pair) is not list or len(pair) != 2 or not all(type(t) is int and 0 <= t < 256 + i for t in pair):
                raise UserError(f"the tokenizer's merge #{i} is invalid: {pair!r}")
        return cls(merges, pattern)

    def save(self, path):
        """Write readable JSON, one merge per line, atomically."""
        d = self.to_dict()
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in d.items() if k != "merges"]
        merges = ",\n".join(f"    [{a}, {b}]" for a, b in d["merges"])
        text = "{\n" + "\n".join(lines) + '\n  "merges": [\n' + merges + "\n  ]\n}\n"
        try:
            with atomic_write(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise UserError(f"cannot write the tokenizer {path}: {e.strerror}") from None

    @classmethod
    def load(cls, path):
        d = read_json(path, "tokenizer JSON")
        try:
            return cls.from_dict(d)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

"""Tokenizers shared by every script: characters here, byte-level BPE in bpe.py.

Both kinds speak the same small interface:
    encode(text, allowed_special=()) -> list[int]
    decode(ids) -> str                 (never raises)
    token_bytes(id) -> bytes           (for streaming output, see StreamDecoder)
    vocab_size, special_tokens {name: id}
    to_dict() / tokenizer_from_dict()  (plain Python values, stored in checkpoints)
"""
import codecs

from errors import UserError

# Reserved for every tokenizer, so a chat format works with either kind.
ENDOFTEXT = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = (ENDOFTEXT, USER, ASSISTANT, END_OF_TURN)


def split_on_specials(text, allowed):
    """Split text around the allowed special tokens.

    'a<|end|>b' with allowed={'<|end|>'} -> ['a', '<|end|>', 'b'];
    the special pieces come back as themselves, ordinary text in between.
    """
    if not allowed:
        return [text]
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "<":
            match = next((s for s in allowed if text.startswith(s, i)), None)
            if match:
                pieces += [text[start:i], match]
                i += len(match)
                start = i
                continue
        i += 1
    pieces.append(text[start:])
    return [p for p in pieces if p]


def resolve_allowed(allowed_special, special_tokens):
    """'all' means every special token; otherwise a collection of their names."""
    if allowed_special == "all":
        return set(special_tokens)
    allowed = set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
    return allowed


class CharTokenizer:
    """One token per character of the training text, plus the special tokens."""

    kind = "char"

    def __init__(self, chars):
        chars = sorted(set(chars))
        self.idx_to_char = {i: ch for i, ch in enumerate(chars)}
        self.char_to_idx = {ch: i for i, ch in enumerate(chars)}
        self.special_tokens = {s: len(chars) + i for i, s in enumerate(SPECIAL_TOKENS)}
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self.vocab_size = len(chars) + len(SPECIAL_TOKENS)

    @classmethod
    def from_text(cls, text):
        return cls(text)

    def encode(self, text, allowed_special=()):
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        unknown = sorted(set(text) - set(self.char_to_idx) - set("".join(allowed)))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise UserError(f"the text has characters the model's vocabulary lacks: {shown}")
        ids = []
        for piece in split_on_specials(text, allowed):
            if piece in allowed:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.char_to_idx[c] for c in piece)
        return ids

    def decode(self, ids):
        return "".join(self._token_text(i) for i in ids)

    def token_bytes(self, i):
        return self._token_text(i).encode("utf-8")

    def _token_text(self, i):
        i = int(i)
        if i in self.idx_to_char:
            return self.idx_to_char[i]
        return self._special_by_id.get(i, "\ufffd")

    def to_dict(self):
        chars = [self.idx_to_char[i] for i in range(len(self.idx_to_char))]
        return {"kind": self.kind, "chars": chars, "special_tokens": list(SPECIAL_TOKENS)}

    @classmethod
    def from_dict(cls, d):
        return cls(d["chars"])


def tokenizer_from_dict(d):
    """Rebuild whichever tokenizer a checkpoint or file describes."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(d)
    if kind == "bpe":
        from bpe import BPETokenizer  # imported lazily: it needs the regex package
        return BPETokenizer.from_dict(d)
    raise UserError(f"unknown tokenizer kind {kind!r}")


class StreamDecoder:
    """Turns token ids into text as they arrive, never printing half a character.

    A BPE token can end in the middle of a multi-byte UTF-8 character; the
    incremental decoder holds those bytes back until the character completes.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self):
        return self._utf8.decode(b"", final=True)

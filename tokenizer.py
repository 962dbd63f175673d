"""What every tokenizer is: the interface, the special tokens, and the character tokenizer. Byte-level BPE is in
bpe.py; tokenizer_io.py rebuilds either kind from a dict or a file."""
import codecs
import re

from errors import UserError

# Reserved for every tokenizer, so a chat format works with either kind.
ENDOFTEXT = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = (ENDOFTEXT, USER, ASSISTANT, END_OF_TURN)
REPLACEMENT = "\ufffd".encode("utf-8")  # what decode shows for an unknown id


def check_special_tokens(stored):
    if stored != list(SPECIAL_TOKENS):
        raise UserError(f"the tokenizer's special tokens {stored!r} differ from this code's {list(SPECIAL_TOKENS)}")


class Tokenizer:
    """The shared part: the vocabulary's bytes, special tokens, decoding and character counts. A subclass sets
    kind, calls _set_vocab with the bytes of its ordinary tokens, and implements encode_ordinary and to_dict."""

    def _set_vocab(self, ordinary_bytes):
        """Ids 0.. for the ordinary tokens' bytes, then one each for the SPECIAL_TOKENS."""
        n = len(ordinary_bytes)
        self.special_tokens = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
        self._bytes = [*ordinary_bytes, *(s.encode("utf-8") for s in SPECIAL_TOKENS)]
        self.vocab_size = len(self._bytes)

    def encode(self, text, allowed_special=()):
        """Text -> ids; a special token's text becomes its id only where allowed ('all' or names), else plain text."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        if allowed - set(self.special_tokens):
            raise ValueError(f"not special tokens of this tokenizer: {sorted(allowed - set(self.special_tokens))}")
        if not allowed:
            return self.encode_ordinary(text)
        alternatives = "|".join(map(re.escape, sorted(allowed, key=len, reverse=True)))  # the longest match wins
        ids = []
        for piece in re.split(f"({alternatives})", text):
            ids += [self.special_tokens[piece]] if piece in allowed else self.encode_ordinary(piece)
        return ids

    def token_bytes(self, i):
        """The bytes of one token; U+FFFD's bytes for an id we don't know."""
        try:
            i = int(i)
        except (TypeError, ValueError, OverflowError):
            return REPLACEMENT
        return self._bytes[i] if 0 <= i < len(self._bytes) else REPLACEMENT

    def decode(self, ids):
        """Ids -> text. Never raises: bytes that aren't valid UTF-8 become U+FFFD."""
        return b"".join(map(self.token_bytes, ids)).decode("utf-8", errors="replace")

    def token_chars(self):
        """How many characters each id's text adds, over the vocabulary: one per UTF-8 byte that is no continuation
        byte (0b10xxxxxx), so a run of ids that begins at a character boundary sums to its characters exactly, even
        where a BPE token ends halfway through one. Special tokens are markup, not text: 0."""
        specials = set(self.special_tokens.values())
        return [0 if i in specials else sum(b & 0xC0 != 0x80 for b in self.token_bytes(i))
                for i in range(self.vocab_size)]


class CharTokenizer(Tokenizer):
    """One token per character of the training text, plus the special tokens."""

    kind = "char"

    def __init__(self, chars):
        chars = sorted(set(chars))
        self.char_to_idx = {ch: i for i, ch in enumerate(chars)}
        self._set_vocab([ch.encode("utf-8", "surrogatepass") for ch in chars])

    def encode_ordinary(self, text):
        unknown = sorted(set(text) - set(self.char_to_idx))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise UserError(f"the text has characters the model's vocabulary lacks: {shown}")
        return [self.char_to_idx[c] for c in text]

    def to_dict(self):
        return {"kind": self.kind, "chars": list(self.char_to_idx), "special_tokens": list(SPECIAL_TOKENS)}

    @classmethod
    def from_dict(cls, d):
        chars = d.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars) \
                or chars != sorted(set(chars)):
            raise UserError("the character tokenizer's 'chars' must be a list of distinct single characters, sorted")
        check_special_tokens(d.get("special_tokens", list(SPECIAL_TOKENS)))
        return cls(chars)


# What people type and what books print differ: a straight ' where Butler has ’, a hyphen for a dash, three dots for
# an ellipsis, a no-break space. Each group's characters stand in for one another when a vocabulary lacks the one typed.
OPENING_QUOTES = {"'": "‘", '"': "“"}
CLOSING_QUOTES = {"'": "’", '"': "”"}
VARIANTS = ["'’‘ʼ′`", '"”“„″', "-‐‑‒–—―", "       ", ("…", "...")]


def fit_typed_text(tokenizer, text):
    """text with each character the vocabulary lacks replaced by a typographic variant it has. A straight quote
    becomes an opening quote after a space or at the start, a closing one (the apostrophe too) elsewhere: "Hector's"
    -> "Hector’s". Characters with no variant stay, for encode to name. Byte-level BPE knows every character."""
    known = getattr(tokenizer, "char_to_idx", None)
    if known is None:
        return text
    out = []
    for i, ch in enumerate(text):
        if ch not in known:
            candidates = [CLOSING_QUOTES.get(ch, ""), OPENING_QUOTES.get(ch, "")]
            if i == 0 or text[i - 1].isspace() or text[i - 1] in "([{":
                candidates.reverse()
            candidates += [v for group in VARIANTS if ch in group for v in group]
            ch = next((c for c in candidates if c and all(part in known for part in c)), ch)
        out.append(ch)
    return "".join(out)


class StreamDecoder:
    """Turns token ids into text as they arrive, never printing half a character: a BPE token can end in the middle
    of a multi-byte UTF-8 character, whose bytes the incremental decoder holds back until it completes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        return self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self):
        return self._utf8.decode(b"", final=True)

"""Getting a tokenizer: from a checkpoint's dict, a tokenizer.json, or the characters of a corpus (here, and not
in tokenizer.py or bpe.py, because it needs both kinds)."""
from bpe import BPETokenizer
from data import corpus_chars
from errors import UserError
from tokenizer import CharTokenizer

KINDS = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(d):
    """Rebuild whichever tokenizer a checkpoint or file describes; UserError if it describes none."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if not isinstance(kind, str) or kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}: expected one of {', '.join(KINDS)}")
    return KINDS[kind].from_dict(d)


def load_tokenizer(spec, data_path):
    """'char' builds one from the characters of data_path; anything else is a tokenizer.json."""
    if spec == "char":
        chars, n_chars = corpus_chars(data_path)
        if n_chars == 0:  # before a model is built or a token cache written
            raise UserError(f"data file {data_path} is empty: give it some text to learn from")
        return CharTokenizer(chars)
    return BPETokenizer.load(spec)

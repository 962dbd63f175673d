"""Tokenizers in the Hugging Face format: b_lm's tokenizers as tokenizer.json (a chat model's template in
tokenizer_config.json), which Hugging Face's `tokenizers` runs with no b_lm code and the same ids, and back. A GPT-2
vocabulary read in is laid out as bpe.py lays out its own: text is unchanged, only the byte tokens' numbering differs.
"""
import os

from bpe import BPETokenizer
from errors import UserError
from files import read_text
from jsonfile import as_json, read_object
from tokenizer import ASSISTANT, END_OF_TURN, ENDOFTEXT, SPECIAL_TOKENS, USER, CharTokenizer

# The pre-tokenizer regex of GPT-2 (and of Hugging Face's ByteLevel pre-tokenizer).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# How a character tokenizer's tokenizer.json cuts text: into single characters, each its own token.
CHAR_PRE_TOKENIZER = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}" + END_OF_TURN +
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END_OF_TURN +
    "{% else %}{{ raise_exception('b_lm chat models know only user and assistant messages') }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")


def byte_to_unicode():
    """GPT-2's printable stand-in for each byte, so that a vocabulary of byte strings can be written as text:
    {byte: character}. Bytes that print as themselves keep their character; the others take U+0100 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(stand_ins)) for b in range(256)}


def byte_level_texts(tokenizer):
    """The text of each of a BPE tokenizer's byte and merge tokens, its bytes written in byte_to_unicode's alphabet
    (how GPT-2's vocab.json, tokenizer.json and llama.cpp's gpt2 vocabularies spell them)."""
    alphabet = byte_to_unicode()
    return ["".join(alphabet[b] for b in tokenizer.token_bytes(i)) for i in range(256 + len(tokenizer.merges))]


def tokenizer_json(tokenizer):
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in tokenizer.special_tokens.items()]
    if tokenizer.kind == "char":
        pre_tokenizer, decoder = CHAR_PRE_TOKENIZER, {"type": "Fuse"}
        model = {"type": "WordLevel", "vocab": dict(tokenizer.char_to_idx), "unk_token": ENDOFTEXT}
    else:
        merges, text = tokenizer.merges, byte_level_texts(tokenizer)
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            BYTE_LEVEL]}
        decoder = BYTE_LEVEL
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": {t: i for i, t in enumerate(text)}, "merges": [[text[a], text[b]] for a, b in merges]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": decoder, "model": model}


def tokenizer_config(context, eos, chat):
    """tokenizer_config.json (a dict): the tokenizer class transformers loads, and a chat model's template."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context, "bos_token": ENDOFTEXT,
              "eos_token": eos, "pad_token": ENDOFTEXT, "clean_up_tokenization_spaces": False}
    return {**config, "chat_template": CHAT_TEMPLATE} if chat else config


def read_tokenizer(in_dir):
    """(our tokenizer, {Hugging Face id: our id}, chat) from tokenizer.json, or vocab.json + merges.txt."""
    config_path = os.path.join(in_dir, "tokenizer_config.json")  # a pipe or folder there is refused
    chat = os.path.lexists(config_path) and read_object(config_path).get("chat_template") == CHAT_TEMPLATE
    path = os.path.join(in_dir, "tokenizer.json")
    if os.path.lexists(path):
        return _from_tokenizer_json(path) + (chat,)
    vocab_path, merges_path = os.path.join(in_dir, "vocab.json"), os.path.join(in_dir, "merges.txt")
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        raise UserError(f"{in_dir} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt")
    vocab = _vocab(read_object(vocab_path), vocab_path)
    lines = read_text(merges_path, "the merges file").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    specials = {ENDOFTEXT: vocab[ENDOFTEXT]} if ENDOFTEXT in vocab else {}
    return _bpe_tokenizer(vocab, merges, GPT2_PATTERN, specials, merges_path) + (chat,)


def _from_tokenizer_json(path):
    """(our tokenizer, {Hugging Face id: our id}) from a tokenizer.json: byte-level BPE, or our characters."""
    spec = read_object(path)
    model, pre_tokenizer = (_checked(spec.get(key), dict, path, f"its {key}") for key in ("model", "pre_tokenizer"))
    specials = {}  # {text: id} of the special tokens among the added tokens
    for token in _checked(spec.get("added_tokens"), list, path, "its added_tokens"):
        if not isinstance(token, dict):
            raise UserError(f"{path}: an added token must be an object, not {as_json(token)}")
        if token.get("special"):
            content, i = token.get("content"), token.get("id")
            if type(content) is not str or type(i) is not int or i < 0:
                raise UserError(f"{path}: special token {as_json(token)} needs a string content and an integer id >= 0")
            specials[content] = i
    if model.get("type") == "WordLevel":  # only what to_hf writes for a CharTokenizer
        if pre_tokenizer != CHAR_PRE_TOKENIZER or spec.get("normalizer"):
            raise UserError(f"{path}: a word-level tokenizer b_lm reads must split text into single "
                            f"characters, as to-hf writes it (a Split on [\\s\\S], Isolated), with no normalizer")
        vocab = _vocab(model.get("vocab"), path)
        chars = sorted(vocab)
        if not chars or any(len(ch) != 1 for ch in chars) or vocab != {ch: i for i, ch in enumerate(chars)} \
                or specials != {s: len(chars) + i for i, s in enumerate(SPECIAL_TOKENS)}:
            raise UserError(f"{path}: a word-level vocabulary that is not a b_lm character tokenizer")
        tokenizer = CharTokenizer(chars)
        return tokenizer, {i: i for i in range(tokenizer.vocab_size)}
    if model.get("type") != "BPE" or spec.get("normalizer") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or model.get("byte_fallback"):
        raise UserError(f"{path}: b_lm reads byte-level BPE tokenizers (GPT-2's kind) and its own character "
                        f"tokenizers, not this one")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else (m,)
              for m in _checked(model.get("merges"), list, path, "the model's merges")]
    return _bpe_tokenizer(_vocab(model.get("vocab"), path), merges, _pattern(pre_tokenizer, path), specials, path)


def _checked(value, kind, path, what):
    """A part of a tokenizer file that must be a dict or a list (empty when absent or null)."""
    if value is not None and not isinstance(value, kind):
        raise UserError(f"{path}: {what} must be {'an object' if kind is dict else 'a list'}, not {as_json(value)}")
    return value or kind()


def _vocab(vocab, path):
    """A vocabulary, checked: {token text: id}, each id a different whole number >= 0."""
    vocab, seen = _checked(vocab, dict, path, "the vocabulary of token: id"), {}
    for text, i in vocab.items():
        if type(i) is not int or i < 0:
            raise UserError(f"{path}: token {as_json(text)} has the id {as_json(i)}, not a whole number >= 0")
        if i in seen:
            raise UserError(f"{path}: tokens {as_json(seen[i])} and {as_json(text)} share the id {i}")
        seen[i] = text
    return vocab


def _pattern(pre_tokenizer, path):
    """The split regex of a byte-level pre-tokenizer: ByteLevel's own (GPT-2's), or a Split before it."""
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise UserError(f"{path}: its pre-tokenizer steps must be a list of objects, not {as_json(steps)}")
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex") and not steps[1].get("add_prefix_space") \
            and steps[0].get("behavior") == "Isolated" and isinstance(steps[0].get("pattern"), dict) \
            and isinstance(steps[0]["pattern"].get("Regex"), str):
        return steps[0]["pattern"]["Regex"]
    raise UserError(f"{path}: its pre-tokenizer {as_json(kinds)} is not one b_lm reads (GPT-2's ByteLevel, or a "
                    f"regex Split then ByteLevel, without a prefix space)")


def _bpe_tokenizer(vocab, merges, pattern, specials, path):
    """Our BPETokenizer for a byte-level vocabulary, and {their id: our id}; every token must be a byte or made by
    a merge of two earlier tokens, and every special token one of ours."""
    unknown = sorted(set(specials) - set(SPECIAL_TOKENS))
    if unknown:
        raise UserError(f"{path}: special tokens {as_json(unknown)} are not b_lm's ({', '.join(SPECIAL_TOKENS)})")
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}

    def token_bytes(text):
        if not isinstance(text, str) or not set(text) <= to_byte.keys():
            raise UserError(f"{path}: token {as_json(text)} is not a string written in the byte-level alphabet")
        return bytes(map(to_byte.get, text))

    ours = {bytes([b]): b for b in range(256)}
    pairs = []
    for rank, pair in enumerate(merges):
        if len(pair) != 2:
            raise UserError(f"{path}: merge #{rank} {as_json(pair)} is not a pair of tokens")
        left, right = token_bytes(pair[0]), token_bytes(pair[1])
        if left not in ours or right not in ours or left + right in ours:
            raise UserError(f"{path}: merge #{rank} {as_json(pair)} joins a token not yet made, or makes one twice")
        ours[left + right] = 256 + rank
        pairs.append((ours[left], ours[right]))
    try:
        tokenizer = BPETokenizer(pairs, pattern)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    hf_to_ours = {}
    for text, hf_id in vocab.items():
        if text in specials:
            continue
        made = token_bytes(text)
        if made not in ours:
            raise UserError(f"{path}: token {as_json(text)} is neither a byte nor made by a merge")
        hf_to_ours[hf_id] = ours[made]
    for name, hf_id in specials.items():
        if hf_to_ours.setdefault(hf_id, tokenizer.special_tokens[name]) != tokenizer.special_tokens[name]:
            raise UserError(f"{path}: the special token {name} has the id {hf_id} of another token")
    if not hf_to_ours:
        raise UserError(f"{path}: its vocabulary is empty")
    return tokenizer, hf_to_ours

import json

import pytest

from errors import UserError
from tokenizer import END_OF_TURN, SPECIAL_TOKENS, CharTokenizer, StreamDecoder
from tokenizer_io import tokenizer_from_dict

TEXT = "Sing, O goddess, the anger of Achilles son of Peleus—“Jove!”\n"


def test_round_trip_and_vocabulary():
    tok = CharTokenizer(TEXT)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) == len(TEXT)
    assert tok.vocab_size == len(set(TEXT)) + len(SPECIAL_TOKENS)
    assert list(tok.char_to_idx) == sorted(set(TEXT)) and list(tok.char_to_idx.values()) == list(range(len(set(TEXT))))


def test_unknown_characters_are_named():
    tok = CharTokenizer(TEXT)
    with pytest.raises(UserError) as e:
        tok.encode("Sing, Zeus quickly!")
    assert "'Z'" in str(e.value) and "'q'" in str(e.value)


def test_special_tokens_only_where_allowed():
    tok = CharTokenizer(TEXT + "<|>enduasirt")
    text = f"Sing{END_OF_TURN}"
    ids = tok.encode(text, allowed_special={END_OF_TURN})
    assert ids[-1] == tok.special_tokens[END_OF_TURN] and len(ids) == 5
    assert tok.decode(ids) == text
    assert len(tok.encode(text)) == len(text)  # not allowed: just characters


def test_dict_round_trip_and_stream_decoding():
    tok = CharTokenizer(TEXT)
    again = tokenizer_from_dict(tok.to_dict())
    assert again.encode(TEXT) == tok.encode(TEXT)
    decoder = StreamDecoder(tok)
    assert "".join(decoder.push(i) for i in tok.encode(TEXT)) + decoder.flush() == TEXT
    assert tok.decode([10_000]) == "\ufffd"  # decoding never raises


def test_unknown_tokenizer_kind():
    with pytest.raises(UserError):
        tokenizer_from_dict({"kind": "words"})


def test_token_chars_count_characters_exactly():
    from bpe import BPETokenizer, train_bpe
    text = "Achilles’ son—Thetis’ “Jove” … é\n" * 20
    for tok in (CharTokenizer(text), train_bpe(text, 300)):
        chars = tok.token_chars()
        ids = tok.encode(text)
        assert sum(chars[i] for i in ids) == len(text)
        assert all(chars[i] == 0 for i in tok.special_tokens.values())
    # a BPE token may hold part of a character: the character counts where it starts
    raw = BPETokenizer([])  # no merges: one token per byte
    assert [raw.token_chars()[i] for i in raw.encode("’")] == [1, 0, 0]


def test_damaged_char_tokenizers_are_user_errors():
    for bad in ({"kind": "char"}, {"kind": "char", "chars": ["ab"]}, {"kind": "char", "chars": ["b", "a"]},
                {"kind": "char", "chars": ["a"], "special_tokens": ["<x>"]}):
        with pytest.raises(UserError):
            tokenizer_from_dict(bad)


DEEP = 100_000
HOSTILE_TOKENIZERS = {
    "deep-array": "[" * DEEP + "]" * DEEP,
    "deep-merges": '{"kind": "bpe", "format_version": 1, "merges": ' + "[" * DEEP + "]" * DEEP + "}",
    "deep-object": '{"kind": ' * DEEP + '"bpe"' + "}" * DEEP,
    "deep-unclosed": '{"kind": "bpe", "merges": ' + "[" * DEEP,
    "deep-150": '{"kind": "bpe", "pattern": ' + "[" * 150 + "]" * 150 + "}",  # parses, deeper than ours
    "deep-990": "[" * 990 + "]" * 990,
    "deep-in-merge": '{"kind": "bpe", "format_version": 1, "special_tokens": ' + json.dumps(list(SPECIAL_TOKENS))
                     + ', "pattern": ".", "merges": [[1, ' + "[" * 50 + "]" * 50 + "]]}",
    "invalid": '{"kind": "bpe", "merges": [',
    "empty": "",
    "not-utf8": b'{"kind": "\xff"}',
    "array": "[1, 2]",
    "version-true": '{"kind": "bpe", "format_version": true}',
    "huge-int": '{"kind": "bpe", "format_version": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("shape", list(HOSTILE_TOKENIZERS))
def test_a_hostile_tokenizer_file_is_one_line(tmp_path, small_corpus, cli, shape):
    import train
    from bpe import BPETokenizer
    from conftest import TINY
    path = tmp_path / "tok.json"
    content = HOSTILE_TOKENIZERS[shape]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="tok.json"):
        BPETokenizer.load(str(path))
    result = cli(train, "--data", small_corpus, "--tokenizer", path, "--ckpt", tmp_path / "x.pth", "--metrics", "",
                 *TINY, "--max-iters", "1")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(path) in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "x.pth").exists()

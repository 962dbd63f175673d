"""data.py's token cache: what an earlier b_lm left in the cache folder is never read as today's layout."""
import hashlib
import json

import numpy as np

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

"""convert.py against the real transformers, tokenizers and safetensors: nothing is mocked, nothing downloaded."""
import json
import os
import shutil

import pytest
import torch
import transformers
from tokenizers import Tokenizer

import chat
import convert
import hf
import train
from bpe import train_bpe
from checkpoint import load_checkpoint, load_model
from conftest import DATA, TINY
from errors import run_main
from sampling import Sampling, generate_ids, stream_text, text_prompt
from tokenizer import ASSISTANT, END_OF_TURN, ENDOFTEXT, USER, CharTokenizer

transformers.logging.set_verbosity_error()
PROMPTS = ["Sing, O goddess, the", "Achilles son of Pe", "and the Achaeans"]
CORPUS = open(DATA, encoding="utf-8").read()


def refused(capsys, *argv, fragment=""):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(convert.main, [str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and fragment in lines[0], lines


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, small_corpus):
    """GPT-2-style (the default) char and BPE, and Llama-style and StableLM-style char checkpoints with a
    context of 96, trained a little: {kind: path}."""
    folder = tmp_path_factory.mktemp("convert")
    tokenizer_path = folder / "tok.json"
    train_bpe(open(small_corpus, encoding="utf-8").read(), 320).save(str(tokenizer_path))
    paths = {}
    for kind, flags in (("char", []), ("bpe", ["--tokenizer", str(tokenizer_path)]),
                        ("llama", ["--positions", "rope", "--norm", "rms", "--mlp", "swiglu"]),
                        ("stablelm", ["--positions", "rope", "--mlp", "swiglu"])):
        paths[kind] = str(folder / f"{kind}.pth")
        train.main(["--data", small_corpus, "--ckpt", paths[kind], "--metrics", "", *TINY, "--block-size", "96",
                    "--max-iters", "20", *flags])
    return paths


def exported(ckpt, folder):
    convert.main(["to-hf", ckpt, str(folder)])
    return (transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval(),
            transformers.AutoTokenizer.from_pretrained(str(folder)))


@pytest.mark.parametrize("kind", ["char", "bpe", "llama", "stablelm"])
def test_an_exported_model_is_the_same_model_in_transformers(tmp_path, checkpoints, kind):
    model, tokenizer, _ = load_model(checkpoints[kind])
    theirs, their_tokenizer = exported(checkpoints[kind], tmp_path / "hf")
    architecture = {"llama": "LlamaForCausalLM", "stablelm": "StableLmForCausalLM"}.get(kind, "GPT2LMHeadModel")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [architecture]
    assert type(theirs).__name__ == architecture
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        assert their_tokenizer(prompt)["input_ids"] == ids
        x = torch.tensor([ids])
        with torch.no_grad():
            torch.testing.assert_close(theirs(x).logits, model(x)[0], rtol=0, atol=1e-4)
        greedy = list(generate_ids(model, ids, Sampling(50, temperature=0)))
        out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=50, min_new_tokens=50,
                              do_sample=False, pad_token_id=0, eos_token_id=None)
        assert out[0, len(ids):].tolist() == greedy
        assert their_tokenizer.decode(greedy) == tokenizer.decode(greedy)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_exported_tokenizer_encodes_data_txt_as_b_lm_does(kind):
    ours = CharTokenizer(CORPUS) if kind == "char" else train_bpe(CORPUS[:200_000], 600)
    theirs = Tokenizer.from_str(json.dumps(hf.tokenizer_json(ours)))
    text = CORPUS + "<|end|> and <|user|>" + ("" if kind == "char" else " naïve 你好 \x00 ’s")
    assert theirs.encode(text).ids == ours.encode(text, allowed_special="all")
    assert theirs.decode(ours.encode(CORPUS[:5000]), skip_special_tokens=False) == CORPUS[:5000]


def test_an_exported_chat_model_keeps_its_format_and_stops_at_end(tmp_path, tiny_chat_ckpt):
    model, tokenizer, _ = load_model(tiny_chat_ckpt)
    theirs, their_tokenizer = exported(tiny_chat_ckpt, tmp_path / "hf")
    history = [("Who is the father of Achilles?", "Peleus")]
    messages = [{"role": "user", "content": history[0][0]}, {"role": "assistant", "content": history[0][1]},
                {"role": "user", "content": "And his mother?"}]
    ids = their_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids == chat.build_prompt(tokenizer, history, "And his mother?", 10 ** 6).ids
    assert their_tokenizer.eos_token == END_OF_TURN
    prompt = chat.build_prompt(tokenizer, [], "Who?", 8).ids
    ours = list(generate_ids(model, prompt, chat.answer_settings(tokenizer, Sampling(8, temperature=0))))
    x = torch.tensor([prompt])
    banned = [[tokenizer.special_tokens[s]] for s in (USER, ASSISTANT, ENDOFTEXT)]
    out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                          bad_words_ids=banned, pad_token_id=tokenizer.special_tokens[ENDOFTEXT])
    assert out[0, len(prompt):].tolist() == ours  # both end with <|end|> if the model says it


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, small_corpus):
    """A small random GPT2LMHeadModel (biases, tied embeddings, gelu_new) and a byte-level BPE tokenizer
    trained by Hugging Face tokenizers with GPT-2's pre-tokenizer, saved with save_pretrained."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    folder = tmp_path_factory.mktemp("gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([small_corpus], trainers.BpeTrainer(vocab_size=400, special_tokens=[ENDOFTEXT],
                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=ENDOFTEXT, bos_token=ENDOFTEXT)
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2, activation_function="gelu_new", tie_word_embeddings=True,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)  # GPT-2 starts its biases at zero: make them matter
    model.save_pretrained(str(folder))
    return folder, model, fast


def test_a_gpt2_model_imports_with_its_tokenizer_and_logits(tmp_path, gpt2_folder):
    folder, theirs, their_tokenizer = gpt2_folder
    ckpt = tmp_path / "gpt2.pth"
    convert.main(["from-hf", str(folder), str(ckpt)])
    model, tokenizer, saved = load_model(str(ckpt))
    c = saved["model_config"]
    assert (c["bias"], c["tie_embeddings"], c["gelu"]) == (True, True, "tanh") and tokenizer.pattern == hf.GPT2_PATTERN
    _, to_ours, _ = hf.read_tokenizer(str(folder))
    order = torch.tensor([to_ours[i] for i in range(len(their_tokenizer))])  # their ids in our numbering
    for prompt in PROMPTS + [CORPUS[1000:1080]]:
        their_ids = their_tokenizer(prompt)["input_ids"]
        assert tokenizer.encode(prompt) == order[their_ids].tolist()
        with torch.no_grad():
            theirs_logits = theirs(torch.tensor([their_ids])).logits
            ours_logits = model(torch.tensor([tokenizer.encode(prompt)]))[0]
        torch.testing.assert_close(ours_logits[..., order], theirs_logits, rtol=0, atol=1e-4)
    ids, settings = text_prompt(tokenizer, "Sing, O goddess", Sampling(20, temperature=0))
    ours = "".join(stream_text(model, tokenizer, ids, settings))
    x = torch.tensor([their_tokenizer("Sing, O goddess")["input_ids"]])
    out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False,
                          bad_words_ids=[[their_tokenizer.convert_tokens_to_ids(ENDOFTEXT)]], pad_token_id=0)
    assert their_tokenizer.decode(out[0, x.shape[1]:]) == ours


@pytest.mark.parametrize("kind", ["char", "bpe", "llama", "stablelm"])
def test_the_round_trip_gives_back_the_same_model(tmp_path, checkpoints, kind):
    convert.main(["to-hf", checkpoints[kind], str(tmp_path / "hf")])
    convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back.pth")])
    a, b = load_checkpoint(checkpoints[kind]), load_checkpoint(str(tmp_path / "back.pth"))
    assert a["tokenizer"] == b["tokenizer"] and a["model_config"] == b["model_config"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (m1, t1, _), (m2, _, _) = load_model(checkpoints[kind]), load_model(str(tmp_path / "back.pth"))
    ids = t1.encode("Sing, ")
    assert list(generate_ids(m1, ids, Sampling(30, seed=5))) == list(generate_ids(m2, ids, Sampling(30, seed=5)))


def test_a_chat_model_survives_the_round_trip(tmp_path, tiny_chat_ckpt):
    convert.main(["to-hf", tiny_chat_ckpt, str(tmp_path / "hf")])
    convert.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back.pth")])
    assert load_checkpoint(str(tmp_path / "back.pth"))["chat"] is True


def test_an_imported_model_fine_tunes_on_new_text(tmp_path, gpt2_folder, capsys):
    folder, _, _ = gpt2_folder
    convert.main(["from-hf", str(folder), str(tmp_path / "gpt2.pth")])
    text = tmp_path / "mine.txt"
    text.write_text("My own little text, about ships and the sea.\n" * 200, encoding="utf-8")
    result = train.main(["--init-from", str(tmp_path / "gpt2.pth"), "--data", str(text), "--ckpt",
                         str(tmp_path / "mine.pth"), "--metrics", "", "--plot", "", "--max-iters", "6",
                         "--batch-size", "4", "--eval-tokens", "256", "--warmup-iters", "2", "--lr", "1e-3"])
    base, tuned = load_checkpoint(str(tmp_path / "gpt2.pth")), load_checkpoint(str(tmp_path / "mine.pth"))
    assert result["step"] == 6 and tuned["model_config"] == base["model_config"]
    assert tuned["tokenizer"] == base["tokenizer"] and tuned["train_args"]["init_from"] == str(tmp_path / "gpt2.pth")
    assert not torch.equal(tuned["model"]["wte.weight"], base["model"]["wte.weight"])


def test_fine_tuning_a_char_model_names_the_characters_it_cannot_read(tmp_path, tiny_ckpt, capsys):
    text = tmp_path / "odd.txt"
    text.write_text("Sing 你好 goddess\n" * 100, encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(train.main, ["--init-from", tiny_ckpt, "--data", str(text), "--ckpt", str(tmp_path / "x.pth"),
                              "--metrics", "", "--plot", "", "--max-iters", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'你'" in err and str(text) in err and not (tmp_path / "x.pth").exists()


class Payload:
    """Stands for any object whose unpickling could run code."""


@pytest.mark.parametrize("case", ["no-config", "llama", "rotary-variant", "shapes", "pickle", "exists",
                                  "not-a-folder"])
def test_bad_input_is_one_line(tmp_path, gpt2_folder, checkpoints, capsys, case):
    folder = tmp_path / "model"
    shutil.copytree(gpt2_folder[0], folder)
    config = json.loads((folder / "config.json").read_text())
    if case == "no-config":
        os.remove(folder / "config.json")
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="config.json")
    elif case == "llama":
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="lacks num_hidden_layers")
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="GPT-2")
    elif case == "rotary-variant":  # a Llama-family folder in a shape b_lm does not build
        convert.main(["to-hf", checkpoints["stablelm"], str(tmp_path / "stablelm")])
        config = json.loads((tmp_path / "stablelm" / "config.json").read_text())
        (tmp_path / "stablelm" / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 1,
                                                                        "hidden_act": "gelu"}))
        refused(capsys, "from-hf", tmp_path / "stablelm", tmp_path / "x.pth", fragment="key/value heads, activation")
        for change, fragment in (({"rope_parameters": {"rope_theta": "abc"}}, "rope_theta a number > 0"),
                                 ({"num_hidden_layers": 0}, "must be >= 1"),
                                 ({"max_position_embeddings": 10 ** 12}, "rotary tables far larger")):
            (tmp_path / "stablelm" / "config.json").write_text(json.dumps({**config, **change}))
            refused(capsys, "from-hf", tmp_path / "stablelm", tmp_path / "x.pth", fragment=fragment)
    elif case == "shapes":
        (folder / "config.json").write_text(json.dumps({**config, "n_embd": 48}))
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="the config makes it")
    elif case == "pickle":
        os.remove(folder / "model.safetensors")
        torch.save({"transformer.wte.weight": Payload()}, folder / "pytorch_model.bin")
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="safely")
    elif case == "exists":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        refused(capsys, "to-hf", checkpoints["char"], tmp_path / "out", fragment="--overwrite")
        assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
        (tmp_path / "x.pth").write_bytes(b"mine")
        refused(capsys, "from-hf", folder, tmp_path / "x.pth", fragment="--overwrite")
        assert (tmp_path / "x.pth").read_bytes() == b"mine"
    else:
        refused(capsys, "from-hf", folder / "config.json", tmp_path / "x.pth", fragment="not a folder")
    assert not (tmp_path / "x.pth").exists() or case == "exists"


def test_an_imported_model_samples_and_chat_tunes_like_our_own(tmp_path, gpt2_folder, small_corpus, cli):
    import generate
    import sft
    from conftest import QA
    folder, _, _ = gpt2_folder
    ckpt = tmp_path / "gpt2.pth"
    convert.main(["from-hf", str(folder), str(ckpt)])
    sample = cli(generate, "--ckpt", ckpt, "--start", "Sing, ", "--length", "10", "--seed", "1")
    assert sample.returncode == 0 and sample.stdout.startswith("Sing, "), sample.stderr
    tuned = cli(sft, "--init-from", ckpt, "--qa", QA, "--data", small_corpus, "--ckpt", tmp_path / "chat.pth",
                "--metrics", "", "--plot", "", "--max-iters", "2", "--batch-size", "4", "--eval-tokens", "256")
    assert tuned.returncode == 0, tuned.stderr
    answer = cli(generate, "--ckpt", tmp_path / "chat.pth", "--chat", "Who is the father of Achilles?", "--length",
                 "5")
    assert answer.returncode == 0 and "<|" not in answer.stdout, answer.stderr


@pytest.mark.parametrize("flags, fragment", [(["--positions", "rope"], "no Hugging Face architecture holds"),
                                             (["--positions", "rope", "--mlp", "swiglu", "--bias"], "--bias")])
def test_a_model_no_hugging_face_architecture_holds_is_refused(tmp_path, capsys, small_corpus, flags, fragment):
    ckpt = tmp_path / "mixed.pth"
    train.main(["--data", small_corpus, "--ckpt", str(ckpt), "--metrics", "", *TINY, "--max-iters", "2", *flags])
    refused(capsys, "to-hf", ckpt, tmp_path / "hf", fragment=fragment)
    assert not (tmp_path / "hf").exists()

"""convert.py against the real transformers, tokenizers and safetensors: nothing is mocked, nothing downloaded."""
import json
import math
import os
import shutil

import pytest
import torch
import transformers
from tokenizers import Tokenizer

import chat
import convert
import train
from bpe import train_bpe
from checkpoint import load_checkpoint, load_model
from conftest import DATA, TINY
from errors import run_main
from hf_tokenizer import GPT2_PATTERN, read_tokenizer, tokenizer_json
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
    """GPT-2-style (the default) char and BPE, and Llama-style and StableLM-style (without and with QK-norm) char
    checkpoints with a context of 96, trained a little: {kind: path}."""
    folder = tmp_path_factory.mktemp("convert")
    tokenizer_path = folder / "tok.json"
    train_bpe(open(small_corpus, encoding="utf-8").read(), 320).save(str(tokenizer_path))
    paths = {}
    for kind, flags in (("char", []), ("bpe", ["--tokenizer", str(tokenizer_path)]),
                        ("llama", ["--positions", "rope", "--norm", "rms", "--mlp", "swiglu"]),
                        ("stablelm", ["--positions", "rope", "--mlp", "swiglu"]),
                        ("qk-norm", ["--positions", "rope", "--mlp", "swiglu", "--qk-norm"])):
        paths[kind] = str(folder / f"{kind}.pth")
        train.main(["--data", small_corpus, "--ckpt", paths[kind], "--metrics", "", *TINY, "--block-size", "96",
                    "--max-iters", "20", *flags])
    return paths


def exported(ckpt, folder):
    convert.main(["to-hf", ckpt, str(folder)])
    return (transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval(),
            transformers.AutoTokenizer.from_pretrained(str(folder)))


@pytest.mark.parametrize("kind", ["char", "bpe", "llama", "stablelm", "qk-norm"])
def test_an_exported_model_is_the_same_model_in_transformers(tmp_path, checkpoints, kind):
    model, tokenizer, _ = load_model(checkpoints[kind])
    theirs, their_tokenizer = exported(checkpoints[kind], tmp_path / "hf")
    architecture = {"llama": "LlamaForCausalLM", "stablelm": "StableLmForCausalLM",
                    "qk-norm": "StableLmForCausalLM"}.get(kind, "GPT2LMHeadModel")
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
    theirs = Tokenizer.from_str(json.dumps(tokenizer_json(ours)))
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


@pytest.mark.parametrize("role", ["system", "tool", "developer"])
def test_the_exported_chat_template_refuses_roles_other_than_user_and_assistant(tmp_path, tiny_chat_ckpt, role):
    """b_lm's chat format has no system turn: transformers' apply_chat_template says so instead of dropping it."""
    import jinja2
    _, their_tokenizer = exported(tiny_chat_ckpt, tmp_path / "hf")
    messages = [{"role": role, "content": "You are Homer."}, {"role": "user", "content": "Who?"}]
    with pytest.raises(jinja2.TemplateError, match="b_lm chat models know only user and assistant messages"):
        their_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = their_tokenizer.apply_chat_template(messages[1:], add_generation_prompt=True, tokenize=False)
    assert text == f"{USER}Who?{END_OF_TURN}{ASSISTANT}"  # the same conversation less that message is fine


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
    assert (c["bias"], c["tie_embeddings"], c["gelu"]) == (True, True, "tanh") and tokenizer.pattern == GPT2_PATTERN
    _, to_ours, _ = read_tokenizer(str(folder))
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


@pytest.mark.parametrize("kind", ["char", "bpe", "llama", "stablelm", "qk-norm"])
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
    assert tuned["tokenizer"] == base["tokenizer"] and tuned["run_config"]["init_from"] == str(tmp_path / "gpt2.pth")
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
        refused(capsys, "from-hf", tmp_path / "stablelm", tmp_path / "x.pth", fragment="num_key_value_heads is 1")
        for change, fragment in (({"rope_parameters": {"rope_theta": "abc"}}, "rope_parameters.rope_theta must be"),
                                 ({"num_hidden_layers": 0}, "num_hidden_layers must be a whole number from 1"),
                                 ({"max_position_embeddings": 10 ** 7}, "rotary tables far larger")):
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
                                             (["--positions", "rope", "--mlp", "swiglu", "--bias"], "--bias"),
                                             (["--positions", "rope", "--norm", "rms", "--mlp", "swiglu",
                                               "--qk-norm"], "no norm of queries and keys"),
                                             (["--qk-norm"], "no norm of queries and keys")])
def test_a_model_no_hugging_face_architecture_holds_is_refused(tmp_path, capsys, small_corpus, flags, fragment):
    ckpt = tmp_path / "mixed.pth"
    train.main(["--data", small_corpus, "--ckpt", str(ckpt), "--metrics", "", *TINY, "--max-iters", "2", *flags])
    refused(capsys, "to-hf", ckpt, tmp_path / "hf", fragment=fragment)
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------- from-hf refuses what b_lm would not build

@pytest.fixture(scope="module")
def hf_folders(gpt2_folder, checkpoints, tmp_path_factory):
    """{architecture: a folder that imports}: GPT-2 made by transformers, Llama and StableLM exported by to-hf."""
    folders = {"gpt2": gpt2_folder[0]}
    for kind in ("llama", "stablelm"):
        folders[kind] = tmp_path_factory.mktemp("export") / kind
        convert.main(["to-hf", checkpoints[kind], str(folders[kind])])
    return folders


def changed(tmp_path, hf_folders, kind, config=None, remove=(), weights=None):
    """A copy of an importable folder with config.json's fields changed (or removed) and weights changed."""
    folder = tmp_path / kind
    shutil.copytree(hf_folders[kind], folder)
    settings = json.loads((folder / "config.json").read_text())
    settings.update(config or {})
    for key in remove:
        settings.pop(key, None)
    (folder / "config.json").write_text(json.dumps(settings))
    if weights:
        from safetensors.torch import load_file, save_file
        tensors = load_file(folder / "model.safetensors")
        weights(tensors)
        save_file(tensors, folder / "model.safetensors")
    return folder


def imported(capsys, folder, out):
    """convert.py from-hf as a command line: (exit code, non-blank stderr lines)."""
    capsys.readouterr()
    code = 0
    try:
        run_main(convert.main, ["from-hf", str(folder), str(out)])
    except SystemExit as e:
        code = e.code
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def refused_import(capsys, folder, out, *fragments):
    code, lines = imported(capsys, folder, out)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in lines[0] and all(f in lines[0] for f in fragments), lines
    assert not os.path.exists(out) and not [p for p in os.listdir(os.path.dirname(out)) if ".pth" in p]


SIZES = [-1, 0, 1.5, 2.0, 10 ** 12, "4", True, False, None, [4], {"n": 4}]
FLAGS = ["yes", "true", 1, 0, None, [], {}]
EPSILONS = ["x", -1, 0, -1e-5, 1e-3, 1e-6, True, None, [1e-5], math.inf, math.nan]
THETAS = ["abc", -1, 0, -10000.0, True, [10000.0], {}, math.inf, math.nan]
ROTARY = ("llama", "stablelm")


def config_cases():
    """(architecture, {field: bad value}, the name the message must give) for every field from-hf reads."""
    cases = []
    for field in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        cases += [("gpt2", {field: v}, field) for v in SIZES if not (field == "vocab_size" and v is None)]
    cases += [("gpt2", {"n_inner": v}, "n_inner") for v in SIZES + [7, 4 * 32 + 1] if v is not None]
    cases += [("gpt2", {"n_head": v}, "n_head") for v in (3, 5, 64)]  # does not divide n_embd 32
    cases += [("gpt2", {"layer_norm_epsilon": v}, "layer_norm_epsilon") for v in EPSILONS]
    cases += [("gpt2", {"activation_function": v}, "activation_function")
              for v in ("relu", "silu", "", 1, None, ["gelu_new"], {"gelu": 1})]
    cases += [("gpt2", {"tie_word_embeddings": v}, "tie_word_embeddings") for v in FLAGS]
    for field, wrong in (("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                         ("add_cross_attention", True)):
        cases += [("gpt2", {field: v}, field) for v in (wrong, "yes", 1, None)]
    cases += [("gpt2", {"model_type": v}, "model_type") for v in ("bert", "GPT2", 5, None, ["gpt2"], {})]
    for kind in ROTARY:
        for field in ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size",
                      "max_position_embeddings", "vocab_size", "num_key_value_heads", "head_dim"):
            optional = field in ("vocab_size", "num_key_value_heads", "head_dim")
            cases += [(kind, {field: v}, field) for v in SIZES if not (optional and v is None)]
        # 16 wide, 2 heads of 8: 3 and 5 do not divide it, 16 heads are 1 wide (rotary turns pairs)
        cases += [(kind, {"num_attention_heads": v}, "num_attention_heads") for v in (3, 5, 16)]
        cases += [(kind, {"num_key_value_heads": v}, "num_key_value_heads") for v in (1, 4)]
        cases += [(kind, {"head_dim": v}, "head_dim") for v in (4, 16)]
        cases += [(kind, {"intermediate_size": v}, "intermediate_size") for v in (64, 40)]
        cases += [(kind, {"hidden_act": v}, "hidden_act") for v in ("gelu", "relu", 1, None, ["silu"])]
        cases += [(kind, {"rope_theta": v}, "rope_theta") for v in THETAS + [500.0]]  # 500: not rope_parameters'
        cases += [(kind, {"rope_parameters": {"rope_type": "default", "rope_theta": v}},
                   "rope_parameters.rope_theta") for v in THETAS]
        cases += [(kind, {"rope_parameters": v}, "rope_parameters") for v in ("x", [1], 5, True)]
        cases += [(kind, {"rope_parameters": {"rope_type": v, "rope_theta": 10000.0}}, "rope_parameters.rope_type")
                  for v in ("linear", "llama3", 1, None)]
        cases += [(kind, {"rope_scaling": v}, "rope_scaling")
                  for v in ({"rope_type": "linear", "factor": 2.0}, "x", 1, [1])]
        cases += [(kind, {"partial_rotary_factor": v}, "partial_rotary_factor") for v in (0.5, 0, "x", None, True)]
        cases += [(kind, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                              "partial_rotary_factor": v}}, "rope_parameters.partial_rotary_factor")
                  for v in (0.25, "x", True)]
        eps = "rms_norm_eps" if kind == "llama" else "layer_norm_eps"
        cases += [(kind, {eps: v}, eps) for v in EPSILONS]
        for field in ("attention_bias", "mlp_bias", "use_qkv_bias", "qk_layernorm", "use_parallel_residual"):
            can_be_true = (kind, field) == ("stablelm", "qk_layernorm")  # b_lm's --qk-norm
            cases += [(kind, {field: v}, field) for v in ("yes", 1, None) + ((True,) * (not can_be_true))]
        cases += [(kind, {"tie_word_embeddings": v}, "tie_word_embeddings") for v in FLAGS]
    return cases


def test_a_stablelm_folder_that_says_qk_layernorm_needs_the_norms_weights(tmp_path, capsys, hf_folders):
    folder = changed(tmp_path, hf_folders, "stablelm", {"qk_layernorm": True})
    refused_import(capsys, folder, tmp_path / "x.pth", "self_attn.q_layernorm.norms.0.weight is missing")


@pytest.mark.parametrize("kind, change, field", config_cases(),
                         ids=lambda x: json.dumps(x)[:40] if isinstance(x, dict) else str(x))
def test_every_config_field_is_checked_by_type_and_range(tmp_path, capsys, hf_folders, kind, change, field):
    folder = changed(tmp_path, hf_folders, kind, change)
    refused_import(capsys, folder, tmp_path / "x.pth", field, "config.json")


@pytest.mark.parametrize("kind, field", [("gpt2", f) for f in ("n_layer", "n_head", "n_embd", "n_positions")] +
                         [(k, f) for k in ROTARY for f in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                                                           "intermediate_size", "max_position_embeddings")])
def test_a_missing_size_is_named(tmp_path, capsys, hf_folders, kind, field):
    refused_import(capsys, changed(tmp_path, hf_folders, kind, remove=[field]), tmp_path / "x.pth", f"lacks {field}")


def test_valid_configs_still_import(tmp_path, capsys, hf_folders):
    # A real GPT-2 config.json has no tie_word_embeddings (it ties), and says 1e-05 and gelu_new.
    real = changed(tmp_path, hf_folders, "gpt2", {"n_ctx": 64, "layer_norm_epsilon": 1e-05, "n_inner": None,
                                                  "activation_function": "gelu_new", "exported_by": "someone"},
                   remove=["tie_word_embeddings", "scale_attn_by_inverse_layer_idx", "add_cross_attention"])
    assert imported(capsys, real, tmp_path / "gpt2.pth") == (0, [])
    assert load_checkpoint(str(tmp_path / "gpt2.pth"))["model_config"]["tie_embeddings"] is True
    for kind in ROTARY:  # transformers 4 (rope_theta alone) and 5 (rope_parameters alone) configs
        for remove in (["rope_parameters"], ["rope_theta"], ["head_dim", "num_key_value_heads", "vocab_size"]):
            folder = changed(tmp_path / "-".join([kind, *remove]), hf_folders, kind, {"rope_scaling": None},
                             remove=remove)
            assert imported(capsys, folder, folder.parent / "back.pth") == (0, []), (kind, remove)


@pytest.mark.parametrize("kind", ["gpt2", *ROTARY])
@pytest.mark.parametrize("name", ["extra.weight", "lm_head.bias", "layers.7.weight", "h.2.ln_1.weight",
                                  "model.layers.2.input_layernorm.weight", "transformer.h.2.ln_1.weight"])
def test_weights_the_model_does_not_use_are_refused(tmp_path, capsys, hf_folders, kind, name):
    def add(tensors):
        tensors[name] = torch.zeros(3)
    refused_import(capsys, changed(tmp_path, hf_folders, kind, weights=add), tmp_path / "x.pth", name,
                   "does not use")


NOT_FLOATS = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64,
              torch.float8_e4m3fn]


@pytest.mark.parametrize("kind, name", [("gpt2", "transformer.wte.weight"), ("gpt2", "transformer.h.1.ln_2.bias"),
                                        ("llama", "model.layers.0.self_attn.q_proj.weight"),
                                        ("stablelm", "model.norm.weight")])
@pytest.mark.parametrize("dtype", NOT_FLOATS, ids=str)
def test_weights_that_are_not_floats_are_refused(tmp_path, capsys, hf_folders, kind, name, dtype):
    def cast(tensors):
        tensors[name] = (tensors[name] * 3).to(dtype)
    folder = changed(tmp_path, hf_folders, kind, weights=cast)
    refused_import(capsys, folder, tmp_path / "x.pth", name, str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.bool], ids=str)
def test_a_pytorch_model_bin_with_integer_weights_is_refused(tmp_path, capsys, hf_folders, dtype):
    from safetensors.torch import load_file
    folder = changed(tmp_path, hf_folders, "gpt2")
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.weight"] = tensors["transformer.h.0.attn.c_attn.weight"].to(dtype)
    torch.save(tensors, folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")
    refused_import(capsys, folder, tmp_path / "x.pth", "h.0.attn.c_attn.weight", str(dtype).removeprefix("torch."))


@pytest.mark.parametrize("kind", ["gpt2", *ROTARY])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_half_and_double_weights_convert_to_float32(tmp_path, capsys, hf_folders, kind, dtype):
    def cast(tensors):
        for name in tensors:
            tensors[name] = tensors[name].to(dtype)
    folder = changed(tmp_path, hf_folders, kind, weights=cast)
    assert imported(capsys, folder, tmp_path / "x.pth") == (0, [])
    assert {t.dtype for t in load_checkpoint(str(tmp_path / "x.pth"))["model"].values()} == {torch.float32}


def test_buffers_transformers_skips_are_skipped(tmp_path, capsys, hf_folders):
    # Older GPT-2 files hold each layer's causal mask, older Llama files their rotary frequencies.
    def gpt2_buffers(tensors):
        for i in range(2):
            tensors[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
            tensors[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)

    def rotary_buffers(tensors):
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    for kind, add in (("gpt2", gpt2_buffers), ("llama", rotary_buffers), ("stablelm", rotary_buffers)):
        folder = changed(tmp_path / kind, hf_folders, kind, weights=add)
        assert imported(capsys, folder, tmp_path / f"{kind}.pth") == (0, []), kind


def test_a_tied_head_must_be_the_embedding(tmp_path, capsys, hf_folders):
    def same(tensors):
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()

    def other(tensors):
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"] * 2
    assert imported(capsys, changed(tmp_path / "a", hf_folders, "gpt2", weights=same), tmp_path / "a.pth") == (0, [])
    refused_import(capsys, changed(tmp_path / "b", hf_folders, "gpt2", weights=other), tmp_path / "b" / "x.pth",
                   "lm_head.weight", "tie_word_embeddings")


@pytest.mark.parametrize("content", [{"transformer.wte.weight": Payload()}, [torch.zeros(2)], {"a": 1}, Payload()],
                         ids=["object-in-dict", "list", "not-tensors", "object"])
def test_a_pickle_that_is_not_a_state_dict_is_one_short_line(tmp_path, capsys, hf_folders, content):
    folder = changed(tmp_path, hf_folders, "gpt2")
    os.remove(folder / "model.safetensors")
    torch.save(content, folder / "pytorch_model.bin")
    code, lines = imported(capsys, folder, tmp_path / "x.pth")
    assert code == 2 and len(lines) == 1 and "pytorch_model.bin" in lines[0] and "safely" in lines[0], lines
    assert "\x1b" not in lines[0] and "trust" not in lines[0] and len(lines[0]) < 300, lines
    assert not (tmp_path / "x.pth").exists()


def test_the_embedding_rows_must_match_vocab_size(tmp_path, capsys, hf_folders):
    for kind in ("gpt2", *ROTARY):
        folder = changed(tmp_path / kind, hf_folders, kind)
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
        folder = changed(tmp_path / f"{kind}-more", hf_folders, kind, {"vocab_size": vocab + 1})
        refused_import(capsys, folder, tmp_path / "x.pth", "vocab_size", str(vocab + 1))


# ------------------------------------------------------------------- hostile JSON

def arrays(depth):
    """JSON arrays nested `depth` deep: [[[...]]]."""
    return "[" * depth + "]" * depth


DEEP = 100_000
IN_CONFIG = '{{"model_type": "gpt2", "x": {}}}'
JSON_SHAPES = {"deep-array": arrays(DEEP), "deep-value": IN_CONFIG.format(arrays(DEEP)),
               "deep-object": '{"a": ' * DEEP + "1" + "}" * DEEP, "deep-unclosed": "[" * DEEP,
               "deep-150": IN_CONFIG.format(arrays(150)),  # parses, but no file of ours nests so deep
               "deep-990": arrays(990), "invalid": '{"model_type": "gpt2",', "empty": "", "array": "[1, 2]",
               "string": '"config"', "not-utf8": b'{"model_type": "\xff\xfe"}',
               "huge-int": '{"n_layer": ' + "9" * 5000 + "}"}


def write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("shape", list(JSON_SHAPES))
@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"])
def test_hostile_json_in_a_hugging_face_folder_is_one_line(tmp_path, capsys, hf_folders, name, shape):
    folder = changed(tmp_path, hf_folders, "gpt2")
    if name == "vocab.json":  # GPT-2's older tokenizer files instead of tokenizer.json
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        os.remove(folder / "tokenizer.json")
    if shape == "huge-int" and name != "config.json":
        shape = "deep-150"
    write(folder / name, JSON_SHAPES[shape])
    refused_import(capsys, folder, tmp_path / "x.pth", name)


TOKENIZER_CASES = {
    "model-string": {"model": "BPE"},
    "model-list": {"model": [1]},
    "added-number": {"added_tokens": 5},
    "added-item-number": {"added_tokens": [5]},
    "special-id-string": {"added_tokens": [{"id": "0", "content": ENDOFTEXT, "special": True}]},
    "special-id-negative": {"added_tokens": [{"id": -1, "content": ENDOFTEXT, "special": True}]},
    "special-content-list": {"added_tokens": [{"id": 0, "content": [ENDOFTEXT], "special": True}]},
    "special-unknown": {"added_tokens": [{"id": 0, "content": "<|mine|>", "special": True}]},
    "vocab-list": {"model.vocab": ["a"]},
    "vocab-id-string": {"model.vocab": {"a": "1"}},
    "vocab-id-float": {"model.vocab": {"a": 1.0}},
    "vocab-id-bool": {"model.vocab": {"a": True}},
    "vocab-id-negative": {"model.vocab": {"a": -1}},
    "vocab-id-shared": {"model.vocab": {"a": 1, "b": 1}},
    "vocab-empty": {"model.vocab": {}, "model.merges": [], "added_tokens": []},
    "merges-object": {"model.merges": {"a": "b"}},
    "merges-number": {"model.merges": [5]},
    "merges-single": {"model.merges": [["a"]]},
    "merges-numbers": {"model.merges": [[1, 2]]},
    "merges-nested": {"model.merges": [[["a"], "b"]]},
    "pre-tokenizer-string": {"pre_tokenizer": "ByteLevel"},
    "pre-tokenizer-steps": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": 5}},
    "pre-tokenizer-step": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [5]}},
    "pre-tokenizer-pattern": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": "x", "behavior": "Isolated"}, {"type": "ByteLevel", "use_regex": False}]}},
    "pre-tokenizer-regex": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"},
        {"type": "ByteLevel", "use_regex": False}]}},
    "model-type": {"model.type": ["BPE"]},
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_a_malformed_tokenizer_json_is_one_line(tmp_path, capsys, hf_folders, case):
    folder = changed(tmp_path, hf_folders, "gpt2")
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    for key, value in TOKENIZER_CASES[case].items():
        if key.startswith("model."):
            spec["model"][key.removeprefix("model.")] = value
        else:
            spec[key] = value
    (folder / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    refused_import(capsys, folder, tmp_path / "x.pth", "tokenizer.json")

"""convert.py to-gguf: the file loads in the real llama.cpp (through llama-cpp-python) as the same model, with the
same tokenizer, and a chat model answers through its embedded template as generate.py --chat does."""
import os

import numpy as np
import pytest
import torch

import convert
import sft
import train
from bpe import train_bpe
from chat import answer_settings, build_prompt, prompt_budget
from checkpoint import load_model
from conftest import DATA, QA, TINY, assert_clean_error, run_script
from sampling import Sampling, generate_ids
from tokenizer import END_OF_TURN

llama_cpp = pytest.importorskip("llama_cpp")
CORPUS = open(DATA, encoding="utf-8").read()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The default block with a character and a BPE vocabulary, trained a little on all of data.txt: {kind: path}."""
    folder = tmp_path_factory.mktemp("gguf")
    train_bpe(CORPUS[:200_000], 320).save(str(folder / "tok.json"))
    paths = {}
    for kind, flags in (("char", []), ("bpe", ["--tokenizer", str(folder / "tok.json")])):
        paths[kind] = str(folder / f"{kind}.pth")
        train.main(["--data", DATA, "--ckpt", paths[kind], "--metrics", "", *TINY, "--block-size", "96",
                    "--max-iters", "30", *flags])
    return paths


def llama(path, context):
    """llama.cpp's model of a GGUF file: float32 keys and values (its default float16 cache would round them)."""
    return llama_cpp.Llama(model_path=path, n_ctx=context, n_threads=1, logits_all=True, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


@pytest.mark.parametrize("kind, dtype", [("char", "f32"), ("bpe", "f32"), ("char", "f16")])
def test_an_exported_file_is_the_same_model_in_llama_cpp(tmp_path, checkpoints, kind, dtype):
    path = str(tmp_path / "model.gguf")
    convert.main(["to-gguf", checkpoints[kind], path, "--dtype", dtype])
    model, tokenizer, _ = load_model(checkpoints[kind])
    llm = llama(path, model.config.block_size)
    # The tokenizer: llama.cpp cuts all of data.txt into b_lm's ids, and reads them back as the text.
    ids = tokenizer.encode(CORPUS)
    assert llm.tokenize(CORPUS.encode("utf-8"), add_bos=False, special=False) == ids
    assert llm.detokenize(ids[:5000]).decode("utf-8") == tokenizer.decode(ids[:5000])
    # The model: the logits of a 64-token prompt, then 50 greedy tokens.
    prompt = ids[10_000:10_064]
    llm.reset()
    llm.eval(prompt)
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0][0].numpy()
    # llama.cpp's GELU rounds through a float16 table (GGML_GELU_FP16 in ggml-cpu), float16 weights more so.
    assert np.abs(np.array(llm.scores[:64]) - ours).max() < (1e-2 if dtype == "f32" else 5e-2)
    if dtype == "f32":  # within the context: llama.cpp's gpt2 has no position past it (it aborts)
        start = prompt[:model.config.block_size - 50]
        assert llama_greedy(llm, start, 50) == list(generate_ids(model, start, Sampling(50, temperature=0)))
    f32 = 4 * sum(v.numel() for v in model.state_dict().values())
    assert os.path.getsize(path) < (1.2 if dtype == "f32" else 0.7) * f32


# The rotary blocks to-hf writes, each to the llama.cpp architecture of its Hugging Face one.
ROTARY = {"llama": ["--norm", "rms"], "llama with biases": ["--norm", "rms", "--bias"], "stablelm": [],
          "stablelm with QK-norm": ["--qk-norm"]}


@pytest.mark.parametrize("block", ROTARY)
def test_a_rotary_model_is_the_same_model_in_llama_cpp(tmp_path, block):
    ckpt, path = str(tmp_path / "rope.pth"), str(tmp_path / "rope.gguf")
    train.main(["--data", DATA, "--ckpt", ckpt, "--metrics", "", *TINY, "--n-embd", "32", "--block-size", "96",
                "--max-iters", "30", "--positions", "rope", "--mlp", "swiglu", *ROTARY[block]])
    done = run_script("convert.py", "to-gguf", ckpt, path)
    assert done.returncode == 0 and f"llama.cpp's {block.split()[0]}," in done.stdout, done.stderr
    model, tokenizer, _ = load_model(ckpt)
    llm = llama(path, model.config.block_size)
    prompt = tokenizer.encode(CORPUS[20_000:20_064])
    llm.reset()
    llm.eval(prompt)
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0][0].numpy()
    # SiLU, the rotation and both norms are float32 in llama.cpp: the logits agree to float32's rounding.
    assert np.abs(np.array(llm.scores[:64]) - ours).max() < 1e-3
    start = prompt[:model.config.block_size - 50]
    assert llama_greedy(llm, start, 50) == list(generate_ids(model, start, Sampling(50, temperature=0)))


# GPT-2's block 32 wide: every matrix in 8 bits; StableLM's: its MLP is 88 wide, so ffn_down stays float16, and
# the QK-norm's gains, (heads, head size), stay float32.
@pytest.mark.parametrize("block", [[], ["--positions", "rope", "--mlp", "swiglu", "--qk-norm"]])
def test_an_8_bit_file_loads_and_tokenizes_alike(tmp_path, monkeypatch, block):
    ckpt, path = str(tmp_path / "wide.pth"), str(tmp_path / "q8.gguf")
    train.main(["--data", DATA, "--ckpt", ckpt, "--metrics", "", *TINY, "--n-embd", "32", "--block-size", "96",
                "--max-iters", "10", *block])
    convert.main(["to-gguf", ckpt, path, "--dtype", "q8_0"])
    model, tokenizer, _ = load_model(ckpt)
    # llama.cpp's AMX kernels (Intel CPUs since Sapphire Rapids) crash on any q8_0 file, ours at every width we
    # tried (llama.cpp issue 20824): load it as `llama-cli --no-repack` does, with llama.cpp's plain CPU kernels.
    default = llama_cpp.llama_cpp.llama_model_default_params

    def without_repacking():
        params = default()
        params.use_extra_bufts = False
        return params
    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_repacking)
    llm = llama(path, model.config.block_size)
    ids = tokenizer.encode(CORPUS[:20_000])
    assert llm.tokenize(CORPUS[:20_000].encode("utf-8"), add_bos=False, special=False) == ids
    llm.reset()
    llm.eval(ids[:64])
    with torch.no_grad():
        ours = model(torch.tensor([ids[:64]]))[0][0].numpy()
    assert np.abs(np.array(llm.scores[:64]) - ours).max() < 0.5  # 8-bit weights: 0.18 on the default model
    f32 = 4 * sum(v.numel() for v in model.state_dict().values())
    assert os.path.getsize(path) < 0.5 * f32


@pytest.fixture(scope="module")
def chat(checkpoints, tmp_path_factory):
    """The char checkpoint tuned by sft.py into a (poor) chat model, and its GGUF file: (checkpoint, file)."""
    folder = tmp_path_factory.mktemp("gguf-chat")
    chat_ckpt, path = str(folder / "chat.pth"), str(folder / "chat.gguf")
    sft.main(["--init-from", checkpoints["char"], "--qa", QA, "--ckpt", chat_ckpt, "--max-iters", "30", "--batch-size",
              "8", "--eval-interval", "15", "--eval-tokens", "256", "--warmup-iters", "2", "--lr", "1e-2",
              "--metrics", "", "--plot", ""])
    convert.main(["to-gguf", chat_ckpt, path])
    return chat_ckpt, path


def test_a_chat_model_answers_through_its_embedded_template(chat):
    chat_ckpt, path = chat
    model, tokenizer, _ = load_model(chat_ckpt)
    llm = llama(path, model.config.block_size)
    for question in ("Who is the father of Achilles?", "Where do the Achaeans camp?"):
        settings = answer_settings(tokenizer, Sampling(max_new_tokens=40, temperature=0))
        prompt = build_prompt(tokenizer, [], question, prompt_budget(model.config.block_size, 40))
        ids = list(generate_ids(model, prompt.ids, settings))
        ended = ids[-1] == tokenizer.special_tokens[END_OF_TURN]
        reply = llm.create_chat_completion(messages=[{"role": "user", "content": question}], temperature=0,
                                           max_tokens=40)
        choice = reply["choices"][0]
        assert reply["usage"]["prompt_tokens"] == len(prompt.ids)
        assert choice["message"]["content"] == tokenizer.decode(ids[:-1] if ended else ids)
        assert choice["finish_reason"] == ("stop" if ended else "length")


def test_bad_exports_are_one_line_and_write_nothing(tmp_path, checkpoints, tiny_ckpt):
    existing = tmp_path / "there.gguf"
    existing.write_bytes(b"mine")
    rope = str(tmp_path / "rope.pth")  # rotary positions with GPT-2's MLP: no Hugging Face or llama.cpp block
    train.main(["--data", DATA, "--ckpt", rope, "--metrics", "", *TINY, "--max-iters", "2", "--positions", "rope"])
    rnn = str(tmp_path / "rnn.pth")
    train.main(["--data", DATA, "--ckpt", rnn, "--metrics", "", "--plot", "", "--model", "rnn", "--n-layer", "1",
                "--n-embd", "16", "--block-size", "16", "--batch-size", "4", "--eval-tokens", "256",
                "--max-iters", "2"])
    before = sorted(os.listdir(tmp_path))
    for args, fragment in ((["to-gguf", tiny_ckpt, existing], "already exists"),
                           (["to-gguf", tiny_ckpt, tmp_path], "is a folder"),
                           (["to-gguf", rope, tmp_path / "rope.gguf"], "the architectures to-hf does"),
                           (["to-gguf", rnn, tmp_path / "rnn.gguf"], "CharRNN"),
                           (["to-gguf", tmp_path / "missing.pth", tmp_path / "m.gguf"], "not found"),
                           (["to-gguf", tiny_ckpt, tmp_path / "x.gguf", "--dtype", "q4"], "invalid choice")):
        assert_clean_error(run_script("convert.py", *map(str, args)), fragment)
    assert sorted(os.listdir(tmp_path)) == before and existing.read_bytes() == b"mine"
    assert run_script("convert.py", "to-gguf", tiny_ckpt, str(existing), "--overwrite").returncode == 0
    assert existing.read_bytes()[:4] == b"GGUF"


def test_serve_benchmark_runs_the_same_load_against_llama_cpp_s_server(chat):
    chat_ckpt, path = chat
    done = run_script("serve_benchmark.py", "--ckpt", chat_ckpt, "--llama-cpp", path, "--seconds", "1", "--clients",
                      "1", "2", "--max-tokens", "8")
    assert done.returncode == 0, done.stderr[-2000:]
    tables = done.stdout.split("llama_cpp.server on ")
    assert len(tables) == 2 and tables[0].splitlines()[1] == "serve.py"
    for table in tables:  # a row per load, each with tokens served
        rows = [line.split() for line in table.splitlines() if line.strip()[:1].isdigit()]
        assert [row[0] for row in rows] == ["1", "2"] and all(int(row[2].replace(",", "")) > 0 for row in rows)
    assert_clean_error(run_script("serve_benchmark.py", "--ckpt", chat_ckpt, "--llama-cpp", path + ".missing"),
                       "--llama-cpp")

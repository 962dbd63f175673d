"""b_lm models as GGUF files, the one format llama.cpp and the apps built on it (llama-cpp-python, Ollama, LM Studio)
read, written with the ggml project's own `gguf` package.

Each block goes to the llama.cpp architecture of the Hugging Face one to-hf writes (hf.architecture):
- GPT-2's block, b_lm's default, is `gpt2`: learned positions, LayerNorm, a GELU MLP, one qkv matrix. b_lm's models
  have no biases; llama.cpp's gpt2 needs them, so they are written as zeros. Its GELU is the tanh approximation read
  from a float16 table (ggml-cpu's GGML_GELU_FP16), b_lm's default the exact one: the logits differ by a few
  thousandths (RESULTS.md, 2026-12-01), the tokens of greedy decoding agree.
- rotary/LayerNorm/SwiGLU, with or without QK-norm, is `stablelm`, which turns each head's halves as b_lm does.
- rotary/RMSNorm/SwiGLU is `llama`, which turns adjacent pairs of dimensions instead: the rows of each head's
  queries and keys are reordered so that the same pairs turn (what llama.cpp's own converter does for Llama).

Vocabularies: a character vocabulary becomes a SentencePiece-style one (llama.cpp's `llama` tokenizer) of the same
characters, a space written as U+2581 as SentencePiece does, with no space added in front: llama.cpp then cuts text
into exactly b_lm's characters. A byte-level BPE becomes llama.cpp's `gpt2` tokenizer with its merges, when its split
pattern is GPT-4's (the default), which llama.cpp knows as `llama-bpe`. Special tokens are control tokens; a chat
model carries its chat template and ends its turns with <|end|>.
"""
import gguf
import numpy as np

from bpe import GPT4_PATTERN
from errors import UserError
from hf import architecture
from hf_tokenizer import CHAT_TEMPLATE, byte_level_texts
from tokenizer import END_OF_TURN, ENDOFTEXT
from transformer import GPTConfig, mlp_width

# How each precision stores the matrices; biases and norms' gains stay float32, as llama.cpp's own files keep them
# (its CPU backend multiplies by no float16 gain).
# q8_0 is llama.cpp's 8-bit type: blocks of 32 weights sharing one float16 scale; a matrix whose rows are not a
# multiple of 32 long stays float16, as llama.cpp's converter leaves it.
DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32), "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16),
          "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
SPACE = "\u2581"  # SentencePiece's visible space
EPS = 1e-5  # b_lm's norms' epsilon


def gguf_problem(checkpoint, tokenizer):
    """Why this checkpoint cannot be written as GGUF, or None."""
    if checkpoint["model_type"] != "transformer":
        return "a CharRNN has no GGUF architecture: only Transformers can be exported"
    try:
        architecture(GPTConfig(**checkpoint["model_config"]))
    except UserError as e:  # llama.cpp has the architectures to-hf writes, no others
        return f"to-gguf writes the architectures to-hf does, and {e}"
    if tokenizer.kind == "char" and SPACE in tokenizer.char_to_idx:
        return f"its vocabulary holds {SPACE!r}, which GGUF's character vocabularies use for the space"
    if tokenizer.kind == "bpe" and tokenizer.pattern != GPT4_PATTERN:
        return "its BPE splits text with its own pattern; llama.cpp knows only standard ones such as GPT-4's"
    return None


def write_gguf(checkpoint, tokenizer, path, name, dtype="f32"):
    """Write the checkpoint's model and tokenizer, called `name`, to the GGUF file `path` (gguf_problem must be
    None); returns the llama.cpp architecture."""
    c = GPTConfig(**checkpoint["model_config"])
    kind = architecture(c)
    numbers, file_type = DTYPES[dtype]
    writer = gguf.GGUFWriter(path, kind)
    writer.add_name(name)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(mlp_width(c.mlp, c.n_embd))
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    if kind == "llama":
        writer.add_layer_norm_rms_eps(EPS)
    else:
        writer.add_layer_norm_eps(EPS)
    if c.positions == "rope":
        writer.add_head_count_kv(c.n_head)
        writer.add_rope_dimension_count(c.n_embd // c.n_head)
        writer.add_rope_freq_base(c.rope_theta)
    writer.add_file_type(file_type)
    add_vocabulary(writer, tokenizer, checkpoint.get("chat"))
    for name, tensor in gguf_tensors(checkpoint["model"], c, kind):
        if tensor.ndim == 1 or name.endswith("_norm.weight"):  # QK-norm's gains are (heads, head size)
            writer.add_tensor(name, tensor)
        elif numbers is np.float32 or numbers is np.float16:
            writer.add_tensor(name, tensor.astype(numbers))
        elif tensor.shape[1] % 32:
            writer.add_tensor(name, tensor.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(tensor, numbers), raw_dtype=numbers)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return kind


def add_vocabulary(writer, tokenizer, chat):
    special = {i: name for name, i in tokenizer.special_tokens.items()}
    if tokenizer.kind == "char":
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(False)
        writer.add_token_scores([0.0] * tokenizer.vocab_size)
        pieces = [special.get(i) or tokenizer.decode([i]).replace(" ", SPACE) for i in range(tokenizer.vocab_size)]
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")
        pieces = [*byte_level_texts(tokenizer), *(special[i] for i in sorted(special))]
        writer.add_token_merges([f"{pieces[a]} {pieces[b]}" for a, b in tokenizer.merges])
    writer.add_token_list(pieces)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(tokenizer.vocab_size)])
    s = tokenizer.special_tokens
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_bos_token_id(s[ENDOFTEXT])
    writer.add_unk_token_id(s[ENDOFTEXT])
    writer.add_eos_token_id(s[END_OF_TURN] if chat else s[ENDOFTEXT])
    if chat:
        writer.add_eot_token_id(s[END_OF_TURN])
        writer.add_chat_template(CHAT_TEMPLATE)


# llama.cpp's name of each layer of a block, and b_lm's (after split_fused for the rotary architectures).
BLOCK = {"gpt2": [("attn_norm", "ln_1"), ("attn_qkv", "attn.qkv"), ("attn_output", "attn.proj"),
                  ("ffn_norm", "ln_2"), ("ffn_up", "mlp.fc"), ("ffn_down", "mlp.proj")],
         "rotary": [("attn_norm", "ln_1"), ("attn_q", "attn.q"), ("attn_k", "attn.k"), ("attn_v", "attn.v"),
                    ("attn_output", "attn.proj"), ("ffn_norm", "ln_2"), ("ffn_gate", "mlp.gate"),
                    ("ffn_up", "mlp.up"), ("ffn_down", "mlp.proj")]}


def gguf_tensors(state_dict, c, kind):
    """(llama.cpp's name, float32 array) of every tensor of the llama.cpp architecture `kind`, from a b_lm state
    dict. A bias b_lm's model lacks is written as zeros where the architecture requires one (every layer of gpt2, the
    LayerNorms of stablelm) and left out elsewhere."""
    weights = {k: v.float().numpy() for k, v in state_dict.items()}
    if kind != "gpt2":
        split_fused(weights, c, kind == "llama")

    def layer(theirs, ours):
        yield f"{theirs}.weight", weights[f"{ours}.weight"]
        zeros_needed = kind == "gpt2" or (kind == "stablelm" and ours.split(".")[-1].startswith("ln"))
        if f"{ours}.bias" in weights or zeros_needed:
            yield f"{theirs}.bias", weights.get(f"{ours}.bias", np.zeros(len(weights[f"{ours}.weight"]), np.float32))

    yield "token_embd.weight", weights["wte.weight"]
    if kind == "gpt2":
        yield "position_embd.weight", weights["wpe.weight"]
    for i in range(c.n_layer):
        for theirs, ours in BLOCK["gpt2" if kind == "gpt2" else "rotary"]:
            yield from layer(f"blk.{i}.{theirs}", f"blocks.{i}.{ours}")
        if c.qk_norm:  # a gain per head and dimension: the queries', then the keys'
            gains = weights[f"blocks.{i}.attn.qk_norm.weight"].reshape(2, c.n_head, -1)
            yield f"blk.{i}.attn_q_norm.weight", gains[0]
            yield f"blk.{i}.attn_k_norm.weight", gains[1]
    yield from layer("output_norm", "ln_f")
    yield "output.weight", weights["lm_head.weight"] if "lm_head.weight" in weights else weights["wte.weight"]


def split_fused(weights, c, pairs_adjacent):
    """b_lm's fused matrices (and their biases) as llama.cpp's rotary architectures hold them: qkv as q, k and v,
    the MLP's fc as gate and up. With pairs_adjacent (llama's rotation), each head's query and key rows are
    reordered from (first half, second half) to interleaved pairs, so that llama.cpp turns the pairs b_lm turns."""
    def adjacent(rows):
        return rows.reshape(c.n_head, 2, -1, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

    for i in range(c.n_layer):
        for p in ("weight", "bias"):
            if (qkv := weights.pop(f"blocks.{i}.attn.qkv.{p}", None)) is not None:
                q, k, v = np.split(qkv, 3)
                if pairs_adjacent:
                    q, k = adjacent(q), adjacent(k)
                weights.update({f"blocks.{i}.attn.{x}.{p}": t for x, t in zip("qkv", (q, k, v))})
            if (fc := weights.pop(f"blocks.{i}.mlp.fc.{p}", None)) is not None:
                gate, up = np.split(fc, 2)  # b_lm's fc is W_gate over W_up
                weights.update({f"blocks.{i}.mlp.gate.{p}": gate, f"blocks.{i}.mlp.up.{p}": up})

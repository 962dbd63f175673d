"""b_lm models as GGUF files, the one format llama.cpp and the apps built on it (llama-cpp-python, Ollama, LM Studio)
read, written with the ggml project's own `gguf` package.

GPT-2's block, b_lm's default, is llama.cpp's `gpt2` architecture: learned positions, LayerNorm, a GELU MLP, one
qkv matrix. b_lm's models have no biases; llama.cpp's gpt2 needs them, so they are written as zeros. Its GELU is the
tanh approximation read from a float16 table (ggml-cpu's GGML_GELU_FP16), b_lm's default the exact one: the logits
differ by a few thousandths (RESULTS.md, 2026-12-01), the tokens of greedy decoding agree.

Vocabularies: a character vocabulary becomes a SentencePiece-style one (llama.cpp's `llama` tokenizer) of the same
characters, a space written as U+2581 as SentencePiece does, with no space added in front: llama.cpp then cuts text
into exactly b_lm's characters. A byte-level BPE becomes llama.cpp's `gpt2` tokenizer with its merges, when its split
pattern is GPT-4's (the default), which llama.cpp knows as `llama-bpe`. Special tokens are control tokens; a chat
model carries its chat template and ends its turns with <|end|>.
"""
import gguf
import numpy as np

from bpe import GPT4_PATTERN
from hf_tokenizer import CHAT_TEMPLATE, byte_level_texts
from tokenizer import END_OF_TURN, ENDOFTEXT

# How each precision stores the matrices; vectors (norms, biases) stay float32, as llama.cpp's own files keep them.
# q8_0 is llama.cpp's 8-bit type: blocks of 32 weights sharing one float16 scale (rows must be multiples of 32).
DTYPES = {"f32": (np.float32, gguf.LlamaFileType.ALL_F32), "f16": (np.float16, gguf.LlamaFileType.MOSTLY_F16),
          "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
SPACE = "\u2581"  # SentencePiece's visible space


def gguf_problem(checkpoint, tokenizer, dtype="f32"):
    """Why this checkpoint cannot be written as GGUF (yet) in dtype, or None."""
    if checkpoint["model_type"] != "transformer":
        return "a CharRNN has no GGUF architecture: only Transformers can be exported"
    c = checkpoint["model_config"]
    parts = (c.get("positions", "learned"), c.get("norm", "layer"), c.get("mlp", "gelu"))
    if parts != ("learned", "layer", "gelu") or c.get("qk_norm"):
        return (f"to-gguf writes GPT-2's block (learned/layer/gelu, llama.cpp's gpt2); this model is "
                f"{'/'.join(parts)}{'/qk-norm' * bool(c.get('qk_norm'))}: export it with to-hf instead")
    if tokenizer.kind == "char" and SPACE in tokenizer.char_to_idx:
        return f"its vocabulary holds {SPACE!r}, which GGUF's character vocabularies use for the space"
    if dtype == "q8_0" and c["n_embd"] % 32:
        return f"q8_0 stores rows in blocks of 32 weights; this model is {c['n_embd']} wide: use f16 or f32"
    if tokenizer.kind == "bpe" and tokenizer.pattern != GPT4_PATTERN:
        return "its BPE splits text with its own pattern; llama.cpp knows only standard ones such as GPT-4's"
    return None


def write_gguf(checkpoint, tokenizer, path, name, dtype="f32"):
    """Write the checkpoint's model and tokenizer, called `name`, to the GGUF file `path` (gguf_problem must be
    None)."""
    c, chat = checkpoint["model_config"], checkpoint.get("chat")
    numbers, file_type = DTYPES[dtype]
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_name(name)
    writer.add_context_length(c["block_size"])
    writer.add_embedding_length(c["n_embd"])
    writer.add_feed_forward_length(4 * c["n_embd"])
    writer.add_block_count(c["n_layer"])
    writer.add_head_count(c["n_head"])
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(file_type)
    add_vocabulary(writer, tokenizer, chat)
    for name, tensor in gguf_tensors(checkpoint["model"], c):
        if tensor.ndim == 1:
            writer.add_tensor(name, tensor)
        elif isinstance(numbers, gguf.GGMLQuantizationType):
            writer.add_tensor(name, gguf.quants.quantize(tensor, numbers), raw_dtype=numbers)
        else:
            writer.add_tensor(name, tensor.astype(numbers))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


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


def gguf_tensors(state_dict, c):
    """(llama.cpp's name, float32 array) of every tensor of llama.cpp's gpt2, from a b_lm state dict."""
    weights = {k: v.float().numpy() for k, v in state_dict.items()}
    C = c["n_embd"]

    def bias(name, size):  # b_lm's own models have none: llama.cpp's gpt2 reads zeros
        return weights.get(name, np.zeros(size, dtype=np.float32))
    yield "token_embd.weight", weights["wte.weight"]
    yield "position_embd.weight", weights["wpe.weight"]
    for i in range(c["n_layer"]):
        ours, theirs = f"blocks.{i}.", f"blk.{i}."
        for b_lm, gg, width in (("ln_1", "attn_norm", C), ("attn.qkv", "attn_qkv", 3 * C),
                                ("attn.proj", "attn_output", C), ("ln_2", "ffn_norm", C),
                                ("mlp.fc", "ffn_up", 4 * C), ("mlp.proj", "ffn_down", C)):
            yield f"{theirs}{gg}.weight", weights[f"{ours}{b_lm}.weight"]
            yield f"{theirs}{gg}.bias", bias(f"{ours}{b_lm}.bias", width)
    yield "output_norm.weight", weights["ln_f.weight"]
    yield "output_norm.bias", bias("ln_f.bias", C)
    yield "output.weight", weights["lm_head.weight"] if "lm_head.weight" in weights else weights["wte.weight"]

"""Models in the Hugging Face format: b_lm checkpoints to and from Hugging Face directories.

b_lm's Transformer with its GPT-2 parts (learned positions, pre-norm
LayerNorm blocks, a 4x GELU MLP) maps onto `GPT2LMHeadModel` weight for
weight; with rotary positions and the gated SwiGLU MLP, onto
`StableLmForCausalLM` (LayerNorm, b_lm's default) or `LlamaForCausalLM`
(RMSNorm). Export writes any of the three; import reads them back (Llama and
StableLM in the shape b_lm builds). Each file has its module: hf_config.py
(config.json), hf_weights.py (the weight maps), hf_tokenizer.py (tokenizer.json).
"""
import json
import os
from dataclasses import asdict, replace

from errors import UserError, short_reason
from hf_config import EXPORTED_BY, architecture, as_json, config_json, read_config, read_object
from hf_tokenizer import read_tokenizer, tokenizer_config, tokenizer_json
from hf_weights import embedding_and_head, from_hf_weights, read_weights, to_hf_weights
from tokenizer import END_OF_TURN, ENDOFTEXT
from transformer import GPTConfig

SUPPORTED = ("GPT-2 (GPT2LMHeadModel), and Llama (LlamaForCausalLM) or StableLM (StableLmForCausalLM) "
             "in the shape of b_lm's rotary models")
# What to_hf writes; --overwrite replaces a folder that holds these and nothing else.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json")


def to_hf(checkpoint, tokenizer, out_dir):
    """Write a checkpoint (checked by checkpoint.checked_tokenizer) as a Hugging Face folder.

    Its weights are handed over one by one and dropped from the checkpoint as
    they go, so converting takes little more memory than the model itself.
    """
    from safetensors.torch import save_file
    if checkpoint["model_type"] != "transformer":
        raise UserError("only Transformer checkpoints convert to the Hugging Face format, not the CharRNN")
    c = GPTConfig(**checkpoint["model_config"])
    chat = bool(checkpoint.get("chat"))
    eos_token = END_OF_TURN if chat else ENDOFTEXT
    bos, eos = tokenizer.special_tokens[ENDOFTEXT], tokenizer.special_tokens[eos_token]
    kind = architecture(c)
    config, weights = config_json(kind, c, bos, eos), to_hf_weights(kind, c, checkpoint["model"])
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), config)
    _write_json(os.path.join(out_dir, "generation_config.json"),
                {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": bos})
    weights_path = os.path.join(out_dir, "model.safetensors")
    try:
        save_file(weights, weights_path, metadata={"format": "pt"})
    except Exception as e:  # safetensors reports a full disk as its own error type, not OSError
        raise UserError(f"cannot write {weights_path}: {short_reason(e)}") from None
    _write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer_json(tokenizer))
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config(c.block_size, eos_token, chat))


def _write_json(path, obj):
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def is_b_lm_export(folder):
    """Whether `folder` holds an export of to_hf and nothing else: the only kind of folder --overwrite replaces."""
    names = os.listdir(folder)
    if not set(names) <= set(EXPORT_FILES) or "config.json" not in names:
        return False
    if any(os.path.islink(os.path.join(folder, n)) or not os.path.isfile(os.path.join(folder, n)) for n in names):
        return False
    try:
        return read_object(os.path.join(folder, "config.json")).get("exported_by") == EXPORTED_BY
    except UserError:
        return False


def from_hf(in_dir):
    """(model config dict, state dict, tokenizer, chat) for a GPT-2, Llama or StableLM directory in a shape
    b_lm builds; UserError for anything else."""
    path = os.path.join(in_dir, "config.json")
    config = read_object(path, f"{in_dir} has no config.json: it is not a Hugging Face model directory")
    kind = config.get("model_type")
    if kind not in ("gpt2", "llama", "stablelm"):
        raise UserError(f"{path}: model_type is {as_json(kind)}; convert.py reads {SUPPORTED}")
    fields, vocab = read_config(config, path)
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    c = GPTConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, attention="sdpa", **fields)
    weights, file_names = read_weights(in_dir, kind)
    ours, bias = from_hf_weights(kind, c, weights, in_dir)
    ours["wte.weight"], ours["lm_head.weight"] = embedding_and_head(kind, c, weights, file_names, vocab, tokenizer,
                                                                    hf_to_ours, in_dir)
    return asdict(replace(c, bias=bias)), {k: v.float() for k, v in ours.items()}, tokenizer, chat

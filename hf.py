"""Models in the Hugging Face format: b_lm checkpoints to and from Hugging Face directories.

b_lm's Transformer with its GPT-2 parts (learned positions, pre-norm
LayerNorm blocks, a 4x GELU MLP) maps onto `GPT2LMHeadModel` weight for
weight. GPT-2 stores its linear layers as `Conv1D`, whose weight is the
transpose of `nn.Linear`'s; b_lm's absent biases are written as zeros.
With rotary positions and the gated SwiGLU MLP it maps onto
`StableLmForCausalLM` (LayerNorm, b_lm's default) or `LlamaForCausalLM`
(RMSNorm): our fused qkv and gate-up matrices split into their q/k/v and
gate/up projections, and our rotary embeddings already pair dimensions as
transformers does. Export writes any of the three; import reads them back
(Llama and StableLM in the shape b_lm builds).

Tokenizers travel as a `tokenizer.json` that Hugging Face's `tokenizers`
runs with no b_lm code:
  - BPE: our split regex, then GPT-2's byte-to-unicode alphabet (each byte
    stands as a printable character, a space as 'Ġ'), our vocabulary and
    merges, our special tokens. It encodes exactly as bpe.py does.
  - characters: one token per character, the same ids.

A GPT-2 vocabulary read in is laid out as bpe.py lays out its own (bytes in
byte order, then a token per merge, then the special tokens), the embedding
and head rows moving with their tokens; special tokens the model lacks get
the mean row. Text and probabilities are unchanged; only the byte tokens'
numbering can differ.
"""
import json
import math
import os
import re
from dataclasses import asdict

import torch

from bpe import BPETokenizer
from checkpoint import MAX_SIZE, dtype_problem, read_pickled
from errors import UserError
from jsonfile import read_json
from tokenizer import ASSISTANT, END_OF_TURN, ENDOFTEXT, SPECIAL_TOKENS, USER, CharTokenizer
from transformer import GPTConfig, mlp_width

# The pre-tokenizer regex of GPT-2 (and of Hugging Face's ByteLevel pre-tokenizer).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SUPPORTED = ("GPT-2 (GPT2LMHeadModel), and Llama (LlamaForCausalLM) or StableLM (StableLmForCausalLM) "
             "in the shape of b_lm's rotary models")
# Our parameter names and GPT-2's, per block; True where GPT-2's Conv1D holds the transpose.
BLOCK_PARTS = [("ln_1", "ln_1", False), ("attn.qkv", "attn.c_attn", True), ("attn.proj", "attn.c_proj", True),
               ("ln_2", "ln_2", False), ("mlp.fc", "mlp.c_fc", True), ("mlp.proj", "mlp.c_proj", True)]
# What to_hf writes, and the mark in its config.json that says b_lm wrote the folder.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json")
EXPORTED_BY = "b_lm convert.py to-hf"
# How a character tokenizer's tokenizer.json cuts text: into single characters, each its own token.
CHAR_PRE_TOKENIZER = {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated", "invert": False}
ACTIVATIONS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER + "{{ message['content'] }}" + END_OF_TURN +
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT + "{{ message['content'] }}" + END_OF_TURN +
    "{% else %}{{ raise_exception('b_lm chat models know only user and assistant messages') }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")


def byte_to_unicode():
    """GPT-2's printable stand-in for each byte: {byte: character}.

    Bytes that print as themselves keep their character; the others (space,
    control bytes, ...) take the characters from U+0100 on, in byte order,
    so that a vocabulary of byte strings can be written as plain text.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    stand_ins = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(stand_ins)) for b in range(256)}


# ------------------------------------------------------------------- b_lm -> Hugging Face

def to_hf(checkpoint, tokenizer, out_dir):
    """Write a checkpoint (checked by checkpoint.check_model) as a Hugging Face folder.

    Its weights are handed over one by one and dropped from the checkpoint as
    they go, so converting takes little more memory than the model itself.
    """
    from safetensors.torch import save_file
    if checkpoint["model_type"] != "transformer":
        raise UserError("only Transformer checkpoints convert to the Hugging Face format, not the CharRNN")
    c = GPTConfig(**checkpoint["model_config"])
    chat = bool(checkpoint.get("chat"))
    eos = END_OF_TURN if chat else ENDOFTEXT
    specials = tokenizer.special_tokens
    parts = (c.positions, c.norm, c.mlp)
    if parts == ("learned", "layer", "gelu"):
        config, weights = gpt2_config(c), gpt2_weights(c, checkpoint["model"])
    elif parts in (("rope", "rms", "swiglu"), ("rope", "layer", "swiglu")):
        if c.norm == "layer" and c.bias:
            raise UserError("StableLM, the Hugging Face architecture of rope/layer/swiglu, has no biases in its "
                            "output projections and MLP: this model (trained with --bias) cannot be exported")
        config = llama_config(c) if c.norm == "rms" else stablelm_config(c)
        weights = rotary_weights(c, checkpoint["model"])
    else:
        raise UserError(f"no Hugging Face architecture holds this mix of parts (positions {c.positions}, norm "
                        f"{c.norm}, mlp {c.mlp}): to-hf writes learned/layer/gelu (GPT-2), rope/layer/swiglu "
                        f"(StableLM) or rope/rms/swiglu (Llama)")
    config.update(vocab_size=c.vocab_size, tie_word_embeddings=c.tie_embeddings, bos_token_id=specials[ENDOFTEXT],
                  eos_token_id=specials[eos], initializer_range=0.02, use_cache=True, dtype="float32",
                  exported_by=EXPORTED_BY)
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, "config.json"), config)
    _write_json(os.path.join(out_dir, "generation_config.json"),
                {"bos_token_id": specials[ENDOFTEXT], "eos_token_id": specials[eos],
                 "pad_token_id": specials[ENDOFTEXT]})
    weights_path = os.path.join(out_dir, "model.safetensors")
    try:
        save_file(weights, weights_path, metadata={"format": "pt"})
    except Exception as e:  # safetensors reports a full disk as its own error type, not OSError
        raise UserError(f"cannot write {weights_path}: {str(e).strip()[:160] or type(e).__name__}") from None
    _write_json(os.path.join(out_dir, "tokenizer.json"), tokenizer_json(tokenizer))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": c.block_size,
                        "bos_token": ENDOFTEXT, "eos_token": eos, "pad_token": ENDOFTEXT,
                        "clean_up_tokenization_spaces": False}
    if chat:
        tokenizer_config["chat_template"] = CHAT_TEMPLATE
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config)


def is_b_lm_export(folder):
    """Whether `folder` holds an export of to_hf and nothing else: the only kind of folder --overwrite replaces."""
    names = os.listdir(folder)
    if not set(names) <= set(EXPORT_FILES) or "config.json" not in names:
        return False
    if any(os.path.islink(os.path.join(folder, n)) or not os.path.isfile(os.path.join(folder, n)) for n in names):
        return False
    try:
        return _read_json(os.path.join(folder, "config.json"), "").get("exported_by") == EXPORTED_BY
    except UserError:
        return False


def gpt2_config(c):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": c.block_size,
            "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
            "activation_function": "gelu" if c.gelu == "exact" else "gelu_new", "resid_pdrop": 0.0,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5, "scale_attn_weights": True}


def llama_config(c):
    # rope_theta for transformers 4, rope_parameters for 5.
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **rotary_shape(c),
            "rms_norm_eps": 1e-5, "attention_bias": c.bias, "mlp_bias": c.bias}


def stablelm_config(c):
    return {"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", **rotary_shape(c),
            "layer_norm_eps": 1e-5, "partial_rotary_factor": 1.0, "use_qkv_bias": False, "qk_layernorm": False,
            "use_parallel_residual": False, "hidden_dropout": 0.0}


def rotary_shape(c):
    """The config fields Llama and StableLM share."""
    return {"hidden_size": c.n_embd, "intermediate_size": mlp_width(c.mlp, c.n_embd), "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "head_dim": c.n_embd // c.n_head,
            "max_position_embeddings": c.block_size, "hidden_act": "silu", "attention_dropout": 0.0,
            "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}


def rotary_weights(config, ours):
    """{Llama or StableLM parameter name: tensor} from our state dict, which it empties as it goes.

    The two name their weights alike; StableLM's LayerNorms also have a bias
    (zeros when ours have none).
    """
    C, H = config.n_embd, mlp_width(config.mlp, config.n_embd)
    out = {"model.embed_tokens.weight": ours.pop("wte.weight")}

    def norm(theirs, name):
        out[f"{theirs}.weight"] = ours.pop(f"{name}.weight")
        if config.norm == "layer":
            out[f"{theirs}.bias"] = ours.pop(f"{name}.bias", torch.zeros(C))

    for i in range(config.n_layer):
        mine, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for part in ("weight", "bias") if config.bias else ("weight",):
            q, k, v = ours.pop(f"{mine}attn.qkv.{part}").split(C)
            gate, up = ours.pop(f"{mine}mlp.fc.{part}").split(H)
            out.update({f"{theirs}self_attn.q_proj.{part}": q, f"{theirs}self_attn.k_proj.{part}": k,
                        f"{theirs}self_attn.v_proj.{part}": v,
                        f"{theirs}self_attn.o_proj.{part}": ours.pop(f"{mine}attn.proj.{part}"),
                        f"{theirs}mlp.gate_proj.{part}": gate, f"{theirs}mlp.up_proj.{part}": up,
                        f"{theirs}mlp.down_proj.{part}": ours.pop(f"{mine}mlp.proj.{part}")})
        norm(f"{theirs}input_layernorm", f"{mine}ln_1")
        norm(f"{theirs}post_attention_layernorm", f"{mine}ln_2")
    norm("model.norm", "ln_f")
    head = ours.pop("lm_head.weight")
    if not config.tie_embeddings:
        out["lm_head.weight"] = head
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_weights(config, ours):
    """{GPT-2 parameter name: tensor} from our state dict, which it empties as it goes; absent biases are zeros."""
    out = {}

    def put(theirs, name, transpose):
        weight = ours.pop(name + ".weight")
        out[theirs + ".weight"] = weight.t().contiguous() if transpose else weight
        out[theirs + ".bias"] = ours.pop(name + ".bias", None)
        if out[theirs + ".bias"] is None:
            out[theirs + ".bias"] = torch.zeros(weight.shape[0])

    out["transformer.wte.weight"] = ours.pop("wte.weight")
    out["transformer.wpe.weight"] = ours.pop("wpe.weight")
    for i in range(config.n_layer):
        for name, theirs, transpose in BLOCK_PARTS:
            put(f"transformer.h.{i}.{theirs}", f"blocks.{i}.{name}", transpose)
    put("transformer.ln_f", "ln_f", False)
    head = ours.pop("lm_head.weight")
    if not config.tie_embeddings:  # tied, it is the embedding, which is written already
        out["lm_head.weight"] = head
    return {k: v.contiguous() for k, v in out.items()}


def tokenizer_json(tokenizer):
    """The tokenizer as Hugging Face tokenizers' tokenizer.json (a dict)."""
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in tokenizer.special_tokens.items()]
    if tokenizer.kind == "char":
        chars = [tokenizer.idx_to_char[i] for i in range(len(tokenizer.idx_to_char))]
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
                "pre_tokenizer": CHAR_PRE_TOKENIZER,
                "post_processor": None, "decoder": {"type": "Fuse"},
                "model": {"type": "WordLevel", "vocab": {ch: i for i, ch in enumerate(chars)},
                          "unk_token": ENDOFTEXT}}
    alphabet = byte_to_unicode()
    text = ["".join(alphabet[b] for b in tokenizer.token_bytes(i)) for i in range(256 + len(tokenizer.merges))]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(text)},
                      "merges": [[text[a], text[b]] for a, b in tokenizer.merges]}}


def _write_json(path, obj):
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


# ------------------------------------------------------------------- Hugging Face -> b_lm

# Buffers, not weights, that transformers itself skips when it loads a folder: GPT-2's causal masks (in
# older files) and the rotary frequencies of older Llama files. b_lm rebuilds both from the config.
GPT2_BUFFERS = r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias"
ROTARY_BUFFERS = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
EPS = 1e-5  # the epsilon of b_lm's LayerNorm and RMSNorm


def from_hf(in_dir):
    """(model config dict, state dict, tokenizer, chat) for a GPT-2, Llama or StableLM directory in a shape
    b_lm builds; UserError for anything else."""
    config = _read_json(os.path.join(in_dir, "config.json"), f"{in_dir} has no config.json: it is not a "
                                                             f"Hugging Face model directory")
    kind = config.get("model_type")
    if kind == "gpt2":
        return gpt2_from_hf(config, in_dir)
    if kind in ("llama", "stablelm"):
        return rotary_from_hf(config, in_dir)
    raise UserError(f"{os.path.join(in_dir, 'config.json')}: model_type is {_shown(kind)}; convert.py reads "
                    f"{SUPPORTED}")


class ConfigFields:
    """The fields of a config.json, each read with its type and range checked and named when it is wrong.

    JSON holds 1.5 for a count, "yes" for a flag and -1 for a width as readily
    as the right thing; int() and bool() would quietly make them 1, True and a
    model that cannot exist.
    """

    def __init__(self, config, where, prefix=""):
        self.config, self.where, self.prefix = config, where, prefix

    def refuse(self, key, problem):
        raise UserError(f"{self.where}: {self.prefix}{key} {problem}")

    def size(self, key, required=True):
        """A count or a width: a whole number from 1 to MAX_SIZE. Optional ones are None when absent or null."""
        if key not in self.config and required:
            raise UserError(f"{self.where} lacks {self.prefix}{key}, which a {self.config.get('model_type')} "
                            f"config.json must give")
        value = self.config.get(key)
        if value is None and not required:
            return None
        if type(value) is not int or not 1 <= value <= MAX_SIZE:
            self.refuse(key, f"must be a whole number from 1 to {MAX_SIZE:,}, not {_shown(value)}")
        return value

    def flag(self, key, default, want=None, why=""):
        """A JSON true or false (default when absent); with want, the value b_lm builds, and why it must be."""
        value = self.config.get(key, default)
        if type(value) is not bool:
            self.refuse(key, f"must be true or false, not {_shown(value)}")
        if want is not None and value != want:
            self.refuse(key, f"is {_shown(value)}: {why}")
        return value

    def number(self, key, default, want=None, why=""):
        """A finite number (default when absent; an optional one, whose default is None, may be null); with
        want, the value b_lm builds, and why it must be."""
        value = self.config.get(key, default)
        if value is None and default is None:
            return None
        if type(value) not in (int, float) or not math.isfinite(value):
            self.refuse(key, f"must be a number, not {_shown(value)}")
        if want is not None and value != want:
            self.refuse(key, f"is {_shown(value)}: {why}")
        return value

    def name(self, key, default, allowed, why):
        """One of the names in allowed (default when absent)."""
        value = self.config.get(key, default)
        if type(value) is not str or value not in allowed:
            self.refuse(key, f"is {_shown(value)}: {why}")
        return value

    def epsilon(self, key, norms):
        """A norm's epsilon: b_lm's norms add EPS, and a model trained with another would compute otherwise."""
        value = self.number(key, EPS)
        if value != EPS:
            self.refuse(key, f"is {_shown(value)}: b_lm's {norms} use {EPS}")

    def heads(self, heads_key, n_head, width_key, width, rotary):
        """That the heads share the width equally (and, for rotary positions, in pairs of dimensions)."""
        if width % n_head:
            self.refuse(heads_key, f"{n_head} does not divide {width_key} {width}: each head takes an equal "
                                   f"share of the width")
        if rotary and width // n_head % 2:
            self.refuse(heads_key, f"{n_head} makes heads {width // n_head} wide ({width_key} / {heads_key}): "
                                   f"rotary embeddings turn pairs of dimensions, so the head size must be even")

    def nested(self, key):
        """The fields of an object-valued field (none when it is absent or null)."""
        value = self.config.get(key)
        if value is not None and not isinstance(value, dict):
            self.refuse(key, f"must be an object, not {_shown(value)}")
        return ConfigFields(value or {}, self.where, f"{self.prefix}{key}.")


def gpt2_from_hf(config, in_dir):
    """from_hf for a GPT-2 folder (GPT2LMHeadModel's config.json, weights and tokenizer)."""
    f = ConfigFields(config, os.path.join(in_dir, "config.json"))
    n_layer, n_head, C, block = (f.size(k) for k in ("n_layer", "n_head", "n_embd", "n_positions"))
    vocab = f.size("vocab_size", required=False)
    f.heads("n_head", n_head, "n_embd", C, rotary=False)
    activation = f.name("activation_function", "gelu_new", ACTIVATIONS,
                        f"b_lm builds GPT-2's activations: {', '.join(ACTIVATIONS)}")
    if f.size("n_inner", required=False) not in (None, 4 * C):
        f.refuse("n_inner", f"is {config['n_inner']}: b_lm's MLP is 4 x n_embd = {4 * C} wide")
    f.epsilon("layer_norm_epsilon", "LayerNorms")
    f.flag("scale_attn_weights", True, want=True, why="b_lm scales attention scores by 1/sqrt(head size)")
    f.flag("scale_attn_by_inverse_layer_idx", False, want=False, why="b_lm does not scale attention by layer")
    f.flag("add_cross_attention", False, want=False, why="b_lm's blocks have no cross-attention")
    tied = f.flag("tie_word_embeddings", True)
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    weights = read_weights(in_dir, GPT2_BUFFERS)
    names = {k: k.removeprefix("transformer.") for k in weights}
    if len(set(names.values())) < len(names):
        twice = next(k for k in weights if k != names[k] and names[k] in weights)
        raise UserError(f"{in_dir}: its weights hold both {_names([twice])} and {_names([names[twice]])}")
    weights, file_names = {names[k]: v for k, v in weights.items()}, {v: k for k, v in names.items()}
    ours = {}

    def take(theirs, name, transpose, expected, parts=("weight", "bias")):
        for part in parts:
            tensor = weights.pop(f"{theirs}.{part}", None)
            shape = expected if part == "weight" else (expected[1] if transpose else expected[0],)
            if tensor is None or tuple(tensor.shape) != shape:
                found = "missing" if tensor is None else tuple(tensor.shape)
                raise UserError(f"{in_dir}: {theirs}.{part} is {found}, the config makes it {shape}")
            ours[f"{name}.{part}"] = tensor.t() if transpose else tensor

    shapes = {"ln_1": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": (C,),
              "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    for i in range(n_layer):
        for name, theirs, transpose in BLOCK_PARTS:
            take(f"h.{i}.{theirs}", f"blocks.{i}.{name}", transpose, shapes[theirs])
    take("ln_f", "ln_f", False, (C,))
    take("wpe", "wpe", False, (block, C), parts=("weight",))
    ours["wte.weight"], ours["lm_head.weight"] = _embedding_and_head(weights, "wte.weight", tied, hf_to_ours,
                                                                     tokenizer, C, vocab, in_dir, file_names)
    # A zero bias is no bias: a model exported from b_lm without biases comes back without them.
    bias = any(v.any() for k, v in ours.items() if k.endswith(".bias"))
    if not bias:
        ours = {k: v for k, v in ours.items() if not k.endswith(".bias")}
    model_config = asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block, n_layer=n_layer,
                                    n_head=n_head, n_embd=C, dropout=0.0, bias=bias, attention="sdpa",
                                    tie_embeddings=tied, gelu=ACTIVATIONS[activation]))
    return model_config, {k: v.float() for k, v in ours.items()}, tokenizer, chat


def rotary_from_hf(config, in_dir):
    """from_hf for a Llama or StableLM folder shaped as b_lm's rotary models are (what to_hf writes)."""
    kind = config["model_type"]
    f = ConfigFields(config, os.path.join(in_dir, "config.json"))
    n_layer, n_head, C, H, block = (f.size(k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                                                        "intermediate_size", "max_position_embeddings"))
    vocab = f.size("vocab_size", required=False)
    f.heads("num_attention_heads", n_head, "hidden_size", C, rotary=True)
    if f.size("num_key_value_heads", required=False) not in (None, n_head):
        f.refuse("num_key_value_heads", f"is {config['num_key_value_heads']}: b_lm's attention has a key and a "
                                        f"value for each of its {n_head} heads")
    if f.size("head_dim", required=False) not in (None, C // n_head):
        f.refuse("head_dim", f"is {config['head_dim']}: b_lm's heads are hidden_size / num_attention_heads = "
                             f"{C // n_head} wide")
    if H != mlp_width("swiglu", C):
        f.refuse("intermediate_size", f"is {H}: b_lm's gated MLP for a hidden_size of {C} is "
                                      f"{mlp_width('swiglu', C)} wide")
    f.name("hidden_act", "silu", ("silu",), "b_lm's gated MLP uses silu")
    rope = f.nested("rope_parameters")
    rope.name("rope_type", "default", ("default",), "b_lm's rotary embeddings are the default kind, unscaled")
    if config.get("rope_scaling") not in (None, {}):
        f.refuse("rope_scaling", f"is {_shown(config['rope_scaling'])}: b_lm's rotary embeddings are not scaled")
    thetas = []  # transformers 5 writes rope_parameters.rope_theta, 4 rope_theta; to_hf writes both
    for fields in (rope, f):
        theta = fields.number("rope_theta", None)
        if theta is not None and theta <= 0:
            fields.refuse("rope_theta", f"must be a number above 0, not {_shown(theta)}")
        thetas += [] if theta is None else [float(theta)]
    if len(thetas) == 2 and thetas[0] != thetas[1]:
        f.refuse("rope_theta", f"is {_shown(thetas[1])}, but rope_parameters.rope_theta is {_shown(thetas[0])}")
    theta = thetas[0] if thetas else 10000.0
    for fields in (rope, f):
        fields.number("partial_rotary_factor", 1.0, want=1.0, why="b_lm turns every dimension of a head")
    f.epsilon("rms_norm_eps" if kind == "llama" else "layer_norm_eps", "RMSNorms" if kind == "llama" else "LayerNorms")
    for key in ("attention_bias", "mlp_bias", "use_qkv_bias"):
        f.flag(key, False, want=False, why="b_lm's rotary models have no biases")
    f.flag("qk_layernorm", False, want=False, why="b_lm does not normalize queries and keys")
    f.flag("use_parallel_residual", False, want=False, why="b_lm's blocks run attention, then the MLP")
    tied = f.flag("tie_word_embeddings", False)
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    weights, ours = read_weights(in_dir, ROTARY_BUFFERS), {}
    norm = "rms" if kind == "llama" else "layer"

    def take(name, shape):
        tensor = weights.pop(name, None)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else tuple(tensor.shape)
            raise UserError(f"{in_dir}: {name} is {found}, the config makes it {shape}")
        return tensor

    def take_norm(theirs, mine):
        ours[f"{mine}.weight"] = take(f"{theirs}.weight", (C,))
        if norm == "layer" and take(f"{theirs}.bias", (C,)).any():
            raise UserError(f"{in_dir}: {theirs}.bias is not zero, and b_lm's LayerNorms have no bias")

    for i in range(n_layer):
        theirs, mine = f"model.layers.{i}.", f"blocks.{i}."
        ours[f"{mine}attn.qkv.weight"] = torch.cat([take(f"{theirs}self_attn.{x}_proj.weight", (C, C))
                                                    for x in "qkv"])
        ours[f"{mine}attn.proj.weight"] = take(f"{theirs}self_attn.o_proj.weight", (C, C))
        ours[f"{mine}mlp.fc.weight"] = torch.cat([take(f"{theirs}mlp.{x}_proj.weight", (H, C)) for x in ("gate", "up")])
        ours[f"{mine}mlp.proj.weight"] = take(f"{theirs}mlp.down_proj.weight", (C, H))
        take_norm(f"{theirs}input_layernorm", f"{mine}ln_1")
        take_norm(f"{theirs}post_attention_layernorm", f"{mine}ln_2")
    take_norm("model.norm", "ln_f")
    ours["wte.weight"], ours["lm_head.weight"] = _embedding_and_head(weights, "model.embed_tokens.weight", tied,
                                                                     hf_to_ours, tokenizer, C, vocab, in_dir)
    model_config = asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block, n_layer=n_layer,
                                    n_head=n_head, n_embd=C, dropout=0.0, bias=False, attention="sdpa",
                                    tie_embeddings=tied, positions="rope", norm=norm, mlp="swiglu",
                                    rope_theta=theta))
    return model_config, {k: v.float() for k, v in ours.items()}, tokenizer, chat


def _embedding_and_head(weights, embedding, tied, hf_to_ours, tokenizer, n_embd, vocab, in_dir, file_names=None):
    """Our (embedding, head) from the weights left once the blocks are taken, which must be all of them.

    A tied model's head is its embedding; a file that holds a head for it as
    well must hold the same matrix. file_names: {name here: name in the file} where they differ.
    """
    wte, head = weights.pop(embedding, None), weights.pop("lm_head.weight", None)
    if weights:  # a tensor the model does not use belongs to a model b_lm would not build
        names = sorted((file_names or {}).get(name, name) for name in weights)
        raise UserError(f"{in_dir}: its weights hold {len(names)} tensor(s) the model its config.json describes "
                        f"does not use ({_names(names)}): another architecture, or more layers than it says")
    if tied and head is not None and wte is not None and (head.shape != wte.shape or head.dtype != wte.dtype
                                                          or not torch.equal(head, wte)):
        raise UserError(f"{in_dir}: lm_head.weight differs from {embedding}, though tie_word_embeddings says they "
                        f"are one matrix")
    # Rows move to our token order; the old matrices are dropped as soon as the new ones exist.
    wte = _rows_for(wte, embedding, hf_to_ours, tokenizer, n_embd, vocab, in_dir)
    return wte, wte if tied else _rows_for(head, "lm_head.weight", hf_to_ours, tokenizer, n_embd, vocab, in_dir)


def _rows_for(matrix, name, hf_to_ours, tokenizer, n_embd, vocab, in_dir):
    """The embedding (or head) rows in our token order; rows for tokens the model lacks are the mean row."""
    need = max(hf_to_ours) + 1
    if matrix is None or matrix.dim() != 2 or matrix.shape[1] != n_embd or matrix.shape[0] < need:
        shape = None if matrix is None else tuple(matrix.shape)
        raise UserError(f"{in_dir}: {name} is {shape}; the tokenizer and config need ({need}+, {n_embd})")
    if vocab is not None and matrix.shape[0] != vocab:
        raise UserError(f"{in_dir}: {name} has {matrix.shape[0]} rows, but config.json's vocab_size is {vocab}")
    hf_ids = list(hf_to_ours)
    rows = matrix.float().mean(0, keepdim=True).repeat(tokenizer.vocab_size, 1)
    rows[[hf_to_ours[i] for i in hf_ids]] = matrix.float()[hf_ids]
    return rows


def read_weights(in_dir, buffers=None):
    """{name: tensor} from model.safetensors, or pytorch_model.bin read with weights_only (it can run no code).

    Names that match the regex `buffers` (what transformers skips on load) are
    dropped; every other tensor must be a float of checkpoint.WEIGHT_DTYPES.
    """
    safetensors_path = os.path.join(in_dir, "model.safetensors")
    bin_path = os.path.join(in_dir, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        path = safetensors_path
        try:
            from safetensors.torch import load_file
            weights = load_file(path)
        except Exception as e:  # damaged or foreign files fail their reader in many ways
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: cannot read its weights safely ({reason})") from None
    elif os.path.isfile(bin_path):
        path = bin_path
        try:
            weights = read_pickled(path)
        except ValueError as e:
            raise UserError(f"{path}: cannot read its weights safely ({e})") from None
        if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in weights.items()):
            raise UserError(f"{path}: cannot read its weights safely (it holds no state dict of tensors)")
    else:
        raise UserError(f"{in_dir} has neither model.safetensors nor pytorch_model.bin")
    weights = {k: t for k, t in weights.items() if not (buffers and re.fullmatch(buffers, k))}
    problem = dtype_problem(weights)
    if problem:
        raise UserError(f"{path}: {problem}")
    return weights


def read_tokenizer(in_dir):
    """(our tokenizer, {Hugging Face id: our id}, chat) from tokenizer.json, or vocab.json + merges.txt."""
    tokenizer_config = {}
    if os.path.lexists(os.path.join(in_dir, "tokenizer_config.json")):  # a pipe or folder there is refused
        tokenizer_config = _read_json(os.path.join(in_dir, "tokenizer_config.json"))
    chat = tokenizer_config.get("chat_template") == CHAT_TEMPLATE
    path = os.path.join(in_dir, "tokenizer.json")
    if os.path.lexists(path):
        spec = _read_json(path)
        model, pre_tokenizer = _part(spec, "model", path), _part(spec, "pre_tokenizer", path)
        specials = _specials(spec.get("added_tokens"), path)
        if model.get("type") == "WordLevel":
            if pre_tokenizer != CHAR_PRE_TOKENIZER or spec.get("normalizer"):
                raise UserError(f"{path}: a word-level tokenizer b_lm reads must split text into single "
                                f"characters, as to-hf writes it (a Split on [\\s\\S], Isolated), with no normalizer")
            return _char_tokenizer(_vocab(model.get("vocab"), path), specials, path) + (chat,)
        if model.get("type") != "BPE" or spec.get("normalizer") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix") or model.get("byte_fallback"):
            raise UserError(f"{path}: b_lm reads byte-level BPE tokenizers (GPT-2's kind) and its own character "
                            f"tokenizers, not this one")
        merges = model.get("merges") or []
        if not isinstance(merges, list):
            raise UserError(f"{path}: the model's merges must be a list, not {_shown(merges)}")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) if isinstance(m, list) else (m,)
                  for m in merges]
        return _bpe_tokenizer(_vocab(model.get("vocab"), path), merges, _pattern(pre_tokenizer, path), specials,
                              path) + (chat,)
    vocab_path, merges_path = os.path.join(in_dir, "vocab.json"), os.path.join(in_dir, "merges.txt")
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        raise UserError(f"{in_dir} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt")
    vocab = _vocab(_read_json(vocab_path), vocab_path)
    try:
        with open(merges_path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
    except OSError as e:
        raise UserError(f"cannot read {merges_path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{merges_path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    specials = {ENDOFTEXT: vocab[ENDOFTEXT]} if ENDOFTEXT in vocab else {}
    return _bpe_tokenizer(vocab, merges, GPT2_PATTERN, specials, merges_path) + (chat,)


def _part(spec, key, path):
    """An object-valued part of tokenizer.json ({} when absent or null)."""
    value = spec.get(key)
    if value is not None and not isinstance(value, dict):
        raise UserError(f"{path}: its {key} must be an object, not {_shown(value)}")
    return value or {}


def _vocab(vocab, path):
    """A vocabulary, checked: {token text: id}, each id a different whole number >= 0."""
    if vocab is None:
        vocab = {}
    if not isinstance(vocab, dict):
        raise UserError(f"{path}: the vocabulary must be an object of token: id, not {_shown(vocab)}")
    seen = {}
    for text, i in vocab.items():
        if type(i) is not int or i < 0:
            raise UserError(f"{path}: token {_shown(text)} has the id {_shown(i)}, not a whole number >= 0")
        if i in seen:
            raise UserError(f"{path}: tokens {_shown(seen[i])} and {_shown(text)} share the id {i}")
        seen[i] = text
    return vocab


def _specials(added, path):
    """{text: id} of the special tokens among tokenizer.json's added_tokens, checked."""
    if added is None:
        added = []
    if not isinstance(added, list):
        raise UserError(f"{path}: its added_tokens must be a list, not {_shown(added)}")
    specials = {}
    for token in added:
        if not isinstance(token, dict):
            raise UserError(f"{path}: an added token must be an object, not {_shown(token)}")
        if token.get("special"):
            content, i = token.get("content"), token.get("id")
            if type(content) is not str or type(i) is not int or i < 0:
                raise UserError(f"{path}: special token {_shown(token)} needs a string content and a whole-number "
                                f"id >= 0")
            specials[content] = i
    return specials


def _pattern(pre_tokenizer, path):
    """The split regex of a byte-level pre-tokenizer: ByteLevel's own (GPT-2's), or a Split before it."""
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise UserError(f"{path}: its pre-tokenizer steps must be a list of objects, not {_shown(steps)}")
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN
    pattern = steps[0].get("pattern") if steps else None
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex") and not steps[1].get("add_prefix_space") \
            and steps[0].get("behavior") == "Isolated" and isinstance(pattern, dict) \
            and isinstance(pattern.get("Regex"), str):
        return pattern["Regex"]
    raise UserError(f"{path}: its pre-tokenizer {_shown(kinds)} is not one b_lm reads (GPT-2's ByteLevel, or a "
                    f"regex Split then ByteLevel, without a prefix space)")


def _bpe_tokenizer(vocab, merges, pattern, specials, path):
    """Our BPETokenizer for a byte-level vocabulary, and {their id: our id}.

    Every token must be a byte or made by a merge of two earlier tokens, and
    every special token one of ours (SPECIAL_TOKENS).
    """
    unknown = sorted(set(specials) - set(SPECIAL_TOKENS))
    if unknown:
        raise UserError(f"{path}: special tokens {_shown(unknown)} are not b_lm's ({', '.join(SPECIAL_TOKENS)})")
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}

    def token_bytes(text):
        if not isinstance(text, str):
            raise UserError(f"{path}: token {_shown(text)} is not a string")
        try:
            return bytes(to_byte[ch] for ch in text)
        except KeyError:
            raise UserError(f"{path}: token {_shown(text)} is not written in the byte-level alphabet") from None

    ours = {bytes([b]): b for b in range(256)}
    pairs = []
    for rank, pair in enumerate(merges):
        if len(pair) != 2:
            raise UserError(f"{path}: merge #{rank} {_shown(pair)} is not a pair of tokens")
        left, right = token_bytes(pair[0]), token_bytes(pair[1])
        if left not in ours or right not in ours or left + right in ours:
            raise UserError(f"{path}: merge #{rank} {_shown(pair)} joins a token not made before it, or makes one "
                            f"twice")
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
            raise UserError(f"{path}: token {_shown(text)} is neither a byte nor made by a merge")
        hf_to_ours[hf_id] = ours[made]
    for name, hf_id in specials.items():
        if hf_to_ours.get(hf_id, tokenizer.special_tokens[name]) != tokenizer.special_tokens[name]:
            raise UserError(f"{path}: the special token {name} has the id {hf_id} of another token")
        hf_to_ours[hf_id] = tokenizer.special_tokens[name]
    if not hf_to_ours:
        raise UserError(f"{path}: its vocabulary is empty")
    return tokenizer, hf_to_ours


def _char_tokenizer(vocab, specials, path):
    """Our CharTokenizer from a tokenizer.json that to_hf wrote for one."""
    chars = sorted(vocab, key=vocab.get)
    if not chars or any(len(ch) != 1 for ch in chars) or chars != sorted(chars) or [vocab[ch] for ch in chars] != \
            list(range(len(chars))) or specials != {s: len(chars) + i for i, s in enumerate(SPECIAL_TOKENS)}:
        raise UserError(f"{path}: a word-level vocabulary that is not a b_lm character tokenizer")
    tokenizer = CharTokenizer(chars)
    return tokenizer, {i: i for i in range(tokenizer.vocab_size)}


def _read_json(path, missing_message=""):
    """A JSON object (a dict) from path; UserError if it is missing, unreadable, not JSON or something else."""
    obj = read_json(path, "JSON", missing=missing_message or None)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {_JSON_KINDS.get(type(obj), 'value')}, not an object")
    return obj


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _shown(value, limit=60):
    """A JSON value as a message shows it: as JSON, on one line, cut short if long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _names(names, shown=3):
    """A few names from a list, printable, for a message: 'a, b, c and 4 more'."""
    listed = ", ".join(n[:80] if n.isprintable() else repr(n)[:80] for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")

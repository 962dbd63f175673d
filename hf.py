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
from dataclasses import asdict

import torch

from bpe import BPETokenizer
from errors import UserError
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
                "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"}, "behavior": "Isolated",
                                  "invert": False},
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

def from_hf(in_dir):
    """(model config dict, state dict, tokenizer, chat) for a GPT-2, Llama or StableLM directory in a shape
    b_lm builds; UserError for anything else."""
    config = _read_json(os.path.join(in_dir, "config.json"), f"{in_dir} has no config.json: it is not a "
                                                             f"Hugging Face model directory")
    if config.get("model_type") == "gpt2":
        return gpt2_from_hf(config, in_dir)
    if config.get("model_type") in ("llama", "stablelm"):
        return rotary_from_hf(config, in_dir)
    raise UserError(f"{in_dir} holds a {config.get('model_type')!r} model; convert.py reads {SUPPORTED}")


def gpt2_from_hf(config, in_dir):
    activation = config.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise UserError(f"{in_dir}: activation {activation!r} is not GPT-2's; supported: {', '.join(ACTIVATIONS)}")
    try:
        n_layer, n_head, n_embd, block = (int(config[k]) for k in ("n_layer", "n_head", "n_embd", "n_positions"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{in_dir}/config.json lacks n_layer, n_head, n_embd or n_positions") from None
    if config.get("n_inner") not in (None, 4 * n_embd) or config.get("scale_attn_by_inverse_layer_idx") \
            or not config.get("scale_attn_weights", True) or config.get("add_cross_attention"):
        raise UserError(f"{in_dir}: a GPT-2 variant b_lm does not build (n_inner, attention scaling or "
                        f"cross-attention differ from GPT-2's)")
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    weights = {k.removeprefix("transformer."): v for k, v in read_weights(in_dir).items()}
    tied = bool(config.get("tie_word_embeddings", True))
    ours = {}

    def take(theirs, name, transpose, expected, parts=("weight", "bias")):
        for part in parts:
            tensor = weights.get(f"{theirs}.{part}")
            shape = expected if part == "weight" else (expected[1] if transpose else expected[0],)
            if tensor is None or tuple(tensor.shape) != shape:
                found = "missing" if tensor is None else tuple(tensor.shape)
                raise UserError(f"{in_dir}: {theirs}.{part} is {found}, the config makes it {shape}")
            ours[f"{name}.{part}"] = tensor.t() if transpose else tensor

    C = n_embd
    shapes = {"ln_1": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": (C,),
              "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    for i in range(n_layer):
        for name, theirs, transpose in BLOCK_PARTS:
            take(f"h.{i}.{theirs}", f"blocks.{i}.{name}", transpose, shapes[theirs])
    take("ln_f", "ln_f", False, (C,))
    take("wpe", "wpe", False, (block, C), parts=("weight",))
    # Rows move to our token order; the old matrices are dropped as soon as the new ones exist.
    ours["wte.weight"] = _rows_for(weights.pop("wte.weight", None), "wte.weight", hf_to_ours, tokenizer, C, in_dir)
    ours["lm_head.weight"] = ours["wte.weight"] if tied else _rows_for(weights.pop("lm_head.weight", None),
                                                                       "lm_head.weight", hf_to_ours, tokenizer, C,
                                                                       in_dir)
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
    try:
        n_layer, n_head, C, H, block = (int(config[k]) for k in ("num_hidden_layers", "num_attention_heads",
                                                                 "hidden_size", "intermediate_size",
                                                                 "max_position_embeddings"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{in_dir}/config.json lacks num_hidden_layers, num_attention_heads, hidden_size, "
                        f"intermediate_size or max_position_embeddings") from None
    rope = config.get("rope_parameters") or {}
    try:
        theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    except (TypeError, ValueError):
        theta = math.nan
    if min(n_layer, n_head, C, H, block) < 1 or not 0 < theta < math.inf:
        raise UserError(f"{in_dir}/config.json: layers, heads, sizes and max_position_embeddings must be >= 1 "
                        f"and rope_theta a number > 0")
    eps = config.get("rms_norm_eps" if kind == "llama" else "layer_norm_eps", 1e-5)
    differs = [what for what, different in (
        ("key/value heads", config.get("num_key_value_heads") not in (None, n_head)),
        ("head size", n_head < 1 or C % n_head or config.get("head_dim") not in (None, C // max(n_head, 1))),
        ("MLP width", H != mlp_width("swiglu", C)),
        ("activation", config.get("hidden_act", "silu") != "silu"),
        ("rotary scaling", rope.get("rope_type", "default") != "default" or config.get("rope_scaling")),
        ("partial rotary", rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0),
        ("norm epsilon", eps != 1e-5),
        ("biases", config.get("attention_bias") or config.get("mlp_bias") or config.get("use_qkv_bias")),
        ("QK norms or parallel residual", config.get("qk_layernorm") or config.get("use_parallel_residual")),
    ) if different]
    if differs:
        raise UserError(f"{in_dir}: a {kind} variant b_lm does not build (its {', '.join(differs)} differ from "
                        f"what b_lm's rotary models have)")
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    weights, ours = read_weights(in_dir), {}
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
    tied = bool(config.get("tie_word_embeddings", False))
    ours["wte.weight"] = _rows_for(weights.pop("model.embed_tokens.weight", None), "model.embed_tokens.weight",
                                   hf_to_ours, tokenizer, C, in_dir)
    ours["lm_head.weight"] = ours["wte.weight"] if tied else _rows_for(weights.pop("lm_head.weight", None),
                                                                       "lm_head.weight", hf_to_ours, tokenizer, C,
                                                                       in_dir)
    model_config = asdict(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block, n_layer=n_layer,
                                    n_head=n_head, n_embd=C, dropout=0.0, bias=False, attention="sdpa",
                                    tie_embeddings=tied, positions="rope", norm=norm, mlp="swiglu",
                                    rope_theta=theta))
    return model_config, {k: v.float() for k, v in ours.items()}, tokenizer, chat


def _rows_for(matrix, name, hf_to_ours, tokenizer, n_embd, in_dir):
    """The embedding (or head) rows in our token order; rows for tokens the model lacks are the mean row."""
    if matrix is None or matrix.dim() != 2 or matrix.shape[1] != n_embd or matrix.shape[0] <= max(hf_to_ours):
        shape = None if matrix is None else tuple(matrix.shape)
        raise UserError(f"{in_dir}: {name} is {shape}; the tokenizer and config need ({max(hf_to_ours) + 1}+, "
                        f"{n_embd})")
    hf_ids = list(hf_to_ours)
    rows = matrix.float().mean(0, keepdim=True).repeat(tokenizer.vocab_size, 1)
    rows[[hf_to_ours[i] for i in hf_ids]] = matrix.float()[hf_ids]
    return rows


def read_weights(in_dir):
    """{name: tensor} from model.safetensors, or pytorch_model.bin read with weights_only (it can run no code)."""
    safetensors_path = os.path.join(in_dir, "model.safetensors")
    bin_path = os.path.join(in_dir, "pytorch_model.bin")
    try:
        if os.path.isfile(safetensors_path):
            from safetensors.torch import load_file
            return load_file(safetensors_path)
        if os.path.isfile(bin_path):
            weights = torch.load(bin_path, map_location="cpu", weights_only=True)
            if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
                raise ValueError("it holds no state dict of tensors")
            return weights
    except Exception as e:  # damaged or foreign files fail their readers in many ways
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{in_dir}: cannot read its weights safely ({reason})") from None
    raise UserError(f"{in_dir} has neither model.safetensors nor pytorch_model.bin")


def read_tokenizer(in_dir):
    """(our tokenizer, {Hugging Face id: our id}, chat) from tokenizer.json, or vocab.json + merges.txt."""
    tokenizer_config = {}
    if os.path.isfile(os.path.join(in_dir, "tokenizer_config.json")):
        tokenizer_config = _read_json(os.path.join(in_dir, "tokenizer_config.json"), "")
    chat = tokenizer_config.get("chat_template") == CHAT_TEMPLATE
    path = os.path.join(in_dir, "tokenizer.json")
    if os.path.isfile(path):
        spec = _read_json(path, "")
        model, added = spec.get("model") or {}, spec.get("added_tokens") or []
        specials = {t["content"]: t["id"] for t in added if isinstance(t, dict) and t.get("special")}
        if model.get("type") == "WordLevel" and (spec.get("pre_tokenizer") or {}).get("type") == "Split":
            return _char_tokenizer(model.get("vocab") or {}, specials, path) + (chat,)
        if model.get("type") != "BPE" or spec.get("normalizer") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix") or model.get("byte_fallback"):
            raise UserError(f"{path}: b_lm reads byte-level BPE tokenizers (GPT-2's kind) and its own character "
                            f"tokenizers, not this one")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
        return _bpe_tokenizer(model.get("vocab") or {}, merges, _pattern(spec.get("pre_tokenizer"), path),
                              specials, path) + (chat,)
    vocab_path, merges_path = os.path.join(in_dir, "vocab.json"), os.path.join(in_dir, "merges.txt")
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        raise UserError(f"{in_dir} has no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt")
    vocab = _read_json(vocab_path, "")
    try:
        with open(merges_path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {merges_path}: {e}") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    specials = {ENDOFTEXT: vocab[ENDOFTEXT]} if ENDOFTEXT in vocab else {}
    return _bpe_tokenizer(vocab, merges, GPT2_PATTERN, specials, merges_path) + (chat,)


def _pattern(pre_tokenizer, path):
    """The split regex of a byte-level pre-tokenizer: ByteLevel's own (GPT-2's), or a Split before it."""
    steps = (pre_tokenizer or {}).get("pretokenizers") if (pre_tokenizer or {}).get("type") == "Sequence" \
        else [pre_tokenizer or {}]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex") and not steps[1].get("add_prefix_space") \
            and steps[0].get("behavior") == "Isolated" and "Regex" in (steps[0].get("pattern") or {}):
        return steps[0]["pattern"]["Regex"]
    raise UserError(f"{path}: its pre-tokenizer {kinds} is not one b_lm reads (GPT-2's ByteLevel, or a regex "
                    f"Split then ByteLevel, without a prefix space)")


def _bpe_tokenizer(vocab, merges, pattern, specials, path):
    """Our BPETokenizer for a byte-level vocabulary, and {their id: our id}.

    Every token must be a byte or made by a merge of two earlier tokens, and
    every special token one of ours (SPECIAL_TOKENS).
    """
    unknown = sorted(set(specials) - set(SPECIAL_TOKENS))
    if unknown:
        raise UserError(f"{path}: special tokens {unknown} are not b_lm's ({', '.join(SPECIAL_TOKENS)})")
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}

    def token_bytes(text):
        try:
            return bytes(to_byte[ch] for ch in text)
        except (KeyError, TypeError):
            raise UserError(f"{path}: token {text!r} is not written in the byte-level alphabet") from None

    ours = {bytes([b]): b for b in range(256)}
    pairs = []
    for rank, pair in enumerate(merges):
        if len(pair) != 2:
            raise UserError(f"{path}: merge #{rank} {pair!r} is not a pair of tokens")
        left, right = token_bytes(pair[0]), token_bytes(pair[1])
        if left not in ours or right not in ours or left + right in ours:
            raise UserError(f"{path}: merge #{rank} {pair!r} joins a token not made before it, or makes one twice")
        ours[left + right] = 256 + rank
        pairs.append((ours[left], ours[right]))
    tokenizer = BPETokenizer(pairs, pattern)
    hf_to_ours = {}
    for text, hf_id in vocab.items():
        if text in specials:
            continue
        made = token_bytes(text)
        if made not in ours:
            raise UserError(f"{path}: token {text!r} is neither a byte nor made by a merge")
        hf_to_ours[hf_id] = ours[made]
    for name, hf_id in specials.items():
        hf_to_ours[hf_id] = tokenizer.special_tokens[name]
    return tokenizer, hf_to_ours


def _char_tokenizer(vocab, specials, path):
    """Our CharTokenizer from a tokenizer.json that to_hf wrote for one."""
    chars = sorted(vocab, key=vocab.get)
    if any(len(ch) != 1 for ch in chars) or chars != sorted(chars) or [vocab[ch] for ch in chars] != \
            list(range(len(chars))) or specials != {s: len(chars) + i for i, s in enumerate(SPECIAL_TOKENS)}:
        raise UserError(f"{path}: a word-level vocabulary that is not a b_lm character tokenizer")
    tokenizer = CharTokenizer(chars)
    return tokenizer, {i: i for i in range(tokenizer.vocab_size)}


def _read_json(path, missing_message):
    """A JSON object (a dict) from path; UserError if it is missing, unreadable or something else."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UserError(missing_message or f"{path} not found") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj

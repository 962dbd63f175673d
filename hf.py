"""Models in the Hugging Face format: b_lm checkpoints to and from Hugging Face directories. b_lm's Transformer maps
weight for weight onto `GPT2LMHeadModel` (learned positions, LayerNorm, a 4x GELU MLP), `StableLmForCausalLM` (rotary,
LayerNorm, SwiGLU, with or without QK-norm) or `LlamaForCausalLM` (rotary, RMSNorm, SwiGLU), both ways. Here
config.json is written and read, every field checked; hf_weights.py maps the weights, hf_tokenizer.py the tokenizer."""
import json
import math
import os
from dataclasses import asdict, replace

from safetensors.torch import save_file

from errors import UserError, short_reason
from hf_tokenizer import read_tokenizer, tokenizer_config, tokenizer_json
from hf_weights import embedding_and_head, from_hf_weights, read_weights, to_hf_weights
from jsonfile import as_json, read_object
from tokenizer import END_OF_TURN, ENDOFTEXT
from transformer import MAX_SIZE, GPTConfig, mlp_width

# What to_hf writes; --overwrite replaces a folder that holds these and nothing else.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
ACTIVATIONS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}  # GPT-2's name: b_lm's gelu
EPS = 1e-5  # the epsilon of b_lm's LayerNorm and RMSNorm: a model trained with another would compute otherwise
EXPORTED_BY = "b_lm convert.py to-hf"  # the mark in config.json that says b_lm wrote the folder
# The Hugging Face architecture that holds each mix of b_lm's parts (positions, norm, mlp).
ARCHITECTURES = {("learned", "layer", "gelu"): "gpt2", ("rope", "rms", "swiglu"): "llama",
                 ("rope", "layer", "swiglu"): "stablelm"}


def to_hf(checkpoint, tokenizer, out_dir):
    """Write a checkpoint (checked by checkpoint.checked_tokenizer) as a Hugging Face folder."""
    if checkpoint["model_type"] != "transformer":
        raise UserError("only Transformer checkpoints convert to the Hugging Face format, not the CharRNN")
    c = GPTConfig(**checkpoint["model_config"])
    chat = bool(checkpoint.get("chat"))
    eos_token = END_OF_TURN if chat else ENDOFTEXT
    bos, eos = tokenizer.special_tokens[ENDOFTEXT], tokenizer.special_tokens[eos_token]
    kind = architecture(c)
    files = {"config.json": config_json(kind, c, bos, eos),
             "generation_config.json": {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": bos},
             "tokenizer.json": tokenizer_json(tokenizer),
             "tokenizer_config.json": tokenizer_config(c.block_size, eos_token, chat)}
    weights = to_hf_weights(kind, c, checkpoint["model"])
    weights_path = os.path.join(out_dir, "model.safetensors")
    try:
        save_file(weights, weights_path, metadata={"format": "pt"})
    except Exception as e:  # safetensors reports a full disk as its own error type, not OSError
        raise UserError(f"cannot write {weights_path}: {short_reason(e)}") from None
    for name, obj in files.items():
        path = os.path.join(out_dir, name)
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(json.dumps(obj, ensure_ascii=False, indent=1) + "\n")
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None


def is_b_lm_export(folder):
    """Whether `folder` holds an export of to_hf and nothing else: the only kind of folder --overwrite replaces."""
    names = os.listdir(folder)
    if not set(names) <= set(EXPORT_FILES) or "config.json" not in names or any(
            os.path.islink(os.path.join(folder, n)) or not os.path.isfile(os.path.join(folder, n)) for n in names):
        return False
    try:
        return read_object(os.path.join(folder, "config.json")).get("exported_by") == EXPORTED_BY
    except UserError:
        return False


def from_hf(in_dir):
    """(model config dict, state dict, tokenizer, chat) from a GPT-2, Llama or StableLM folder b_lm can build."""
    path = os.path.join(in_dir, "config.json")
    config = read_object(path, f"{in_dir} has no config.json: it is not a Hugging Face model directory")
    kind = config.get("model_type")
    if kind not in ("gpt2", "llama", "stablelm"):
        raise UserError(f"{path}: model_type is {as_json(kind)}; convert.py reads GPT-2 (GPT2LMHeadModel), and "
                        f"Llama (LlamaForCausalLM) or StableLM (StableLmForCausalLM) shaped as b_lm's rotary models")
    f = ConfigFields(config, path)
    fields = _gpt2_fields(f) if kind == "gpt2" else _rotary_fields(f, kind)
    vocab = f.size("vocab_size", required=False)
    tokenizer, hf_to_ours, chat = read_tokenizer(in_dir)
    c = GPTConfig(vocab_size=tokenizer.vocab_size, dropout=0.0, attention="sdpa", **fields)
    weights, file_names = read_weights(in_dir, kind)
    ours, bias = from_hf_weights(kind, c, weights, in_dir)
    ours.update(embedding_and_head(kind, c, weights, file_names, vocab, hf_to_ours, in_dir))
    return asdict(replace(c, bias=bias)), {k: v.float() for k, v in ours.items()}, tokenizer, chat


def architecture(c):
    """The Hugging Face architecture that holds a GPTConfig: 'gpt2', 'llama' or 'stablelm'; UserError if none does."""
    kind = ARCHITECTURES.get((c.positions, c.norm, c.mlp))
    if kind is None:
        raise UserError(f"no Hugging Face architecture holds positions {c.positions}, norm {c.norm}, mlp {c.mlp}: "
                        f"GPT-2 is learned/layer/gelu, StableLM rope/layer/swiglu, Llama rope/rms/swiglu")
    if c.qk_norm and kind != "stablelm":
        raise UserError(f"{kind}, the Hugging Face architecture of {c.positions}/{c.norm}/{c.mlp}, has no norm of "
                        f"queries and keys: a model trained with --qk-norm exports as StableLM (rope/layer/swiglu)")
    if kind == "stablelm" and c.bias:
        raise UserError("StableLM, the Hugging Face architecture of rope/layer/swiglu, has no biases in its "
                        "output projections and MLP: this model (trained with --bias) cannot be exported")
    return kind


def config_json(kind, c, bos, eos):
    """config.json (a dict) for a GPTConfig as the architecture `kind`, with its start and end token ids."""
    rotary = {"hidden_size": c.n_embd, "intermediate_size": mlp_width(c.mlp, c.n_embd), "num_hidden_layers": c.n_layer,
              "num_attention_heads": c.n_head, "num_key_value_heads": c.n_head, "head_dim": c.n_embd // c.n_head,
              "max_position_embeddings": c.block_size, "hidden_act": "silu", "attention_dropout": 0.0,
              # rope_theta for transformers 4, rope_parameters for 5
              "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta}}
    config = {
        "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": c.block_size,
                 "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                 "n_inner": None, "activation_function": "gelu" if c.gelu == "exact" else "gelu_new",
                 "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": EPS,
                 "scale_attn_weights": True},
        "llama": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **rotary, "rms_norm_eps": EPS,
                  "attention_bias": c.bias, "mlp_bias": c.bias},
        "stablelm": {"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", **rotary,
                     "layer_norm_eps": EPS, "partial_rotary_factor": 1.0, "use_qkv_bias": False,
                     "qk_layernorm": c.qk_norm, "use_parallel_residual": False, "hidden_dropout": 0.0},
    }[kind]
    return {**config, "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings, "bos_token_id": bos,
            "eos_token_id": eos, "initializer_range": 0.02, "use_cache": True, "dtype": "float32",
            "exported_by": EXPORTED_BY}


class ConfigFields:
    """The fields of a config.json, each read with its type and range checked and named when it is wrong: JSON holds
    1.5 for a count, "yes" for a flag and -1 for a width as readily as the right thing, and int() and bool() would
    quietly make them 1, True and a model that cannot exist. Where b_lm builds one value only, `want` is that value
    and `why` says why."""

    def __init__(self, config, where, prefix=""):
        self.config, self.where, self.prefix = config, where, prefix

    def refuse(self, key, problem):
        raise UserError(f"{self.where}: {self.prefix}{key} {problem}")

    def _value(self, key, default, fits, kind, want, why, optional=False):
        value = self.config.get(key, default)
        if value is None and optional:
            return None
        if not fits(value):
            self.refuse(key, f"must be {kind}, not {as_json(value)}")
        if want is not None and value != want:
            self.refuse(key, f"is {as_json(value)}: {why}")
        return value

    def size(self, key, required=True, want=None, why=""):
        """A count or a width: a whole number from 1 to MAX_SIZE. Optional ones are None when absent or null."""
        if key not in self.config and required:
            raise UserError(f"{self.where} lacks {self.prefix}{key}, which a {self.config.get('model_type')} "
                            f"config.json must give")
        return self._value(key, None, lambda v: type(v) is int and 1 <= v <= MAX_SIZE,
                           f"a whole number from 1 to {MAX_SIZE:,}", want, why, optional=not required)

    def flag(self, key, default, want=None, why=""):
        return self._value(key, default, lambda v: type(v) is bool, "true or false", want, why)

    def number(self, key, default, want=None, why=""):
        """A finite number (default when absent; an optional one, whose default is None, may be null)."""
        return self._value(key, default, lambda v: type(v) in (int, float) and math.isfinite(v), "a number", want,
                           why, optional=default is None)

    def name(self, key, default, allowed, why):
        value = self.config.get(key, default)
        if type(value) is not str or value not in allowed:
            self.refuse(key, f"is {as_json(value)}: {why}")
        return value

    def heads(self, heads_key, n_head, width_key, width, rotary):
        """That the heads share the width equally (and, for rotary positions, in pairs of dimensions)."""
        if width % n_head:
            self.refuse(heads_key, f"{n_head} does not divide {width_key} {width}: each head takes an equal "
                                   f"share of the width")
        if rotary and width // n_head % 2:
            self.refuse(heads_key, f"{n_head} makes heads {width // n_head} wide ({width_key} / {heads_key}): "
                                   f"rotary embeddings turn pairs of dimensions, so the head size must be even")


def _gpt2_fields(f):
    """The GPTConfig fields but vocab_size of a GPT2LMHeadModel config.json."""
    n_layer, n_head, C, block = (f.size(k) for k in ("n_layer", "n_head", "n_embd", "n_positions"))
    f.heads("n_head", n_head, "n_embd", C, rotary=False)
    activation = f.name("activation_function", "gelu_new", ACTIVATIONS,
                        f"b_lm builds GPT-2's activations: {', '.join(ACTIVATIONS)}")
    f.size("n_inner", required=False, want=4 * C, why=f"b_lm's MLP is 4 x n_embd = {4 * C} wide")
    f.number("layer_norm_epsilon", EPS, want=EPS, why=f"b_lm's LayerNorms use {EPS}")
    f.flag("scale_attn_weights", True, want=True, why="b_lm scales attention scores by 1/sqrt(head size)")
    f.flag("scale_attn_by_inverse_layer_idx", False, want=False, why="b_lm does not scale attention by layer")
    f.flag("add_cross_attention", False, want=False, why="b_lm's blocks have no cross-attention")
    return dict(block_size=block, n_layer=n_layer, n_head=n_head, n_embd=C, gelu=ACTIVATIONS[activation],
                tie_embeddings=f.flag("tie_word_embeddings", True))


def _rotary_fields(f, kind):
    """_gpt2_fields for Llama and StableLM, in the one shape b_lm builds (each field's `why` says it)."""
    n_layer, n_head, C, _, block = (f.size(k) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                                                        "intermediate_size", "max_position_embeddings"))
    f.heads("num_attention_heads", n_head, "hidden_size", C, rotary=True)
    f.size("num_key_value_heads", required=False, want=n_head,
           why=f"b_lm's attention has a key and a value for each of its {n_head} heads")
    f.size("head_dim", required=False, want=C // n_head,
           why=f"b_lm's heads are hidden_size / num_attention_heads = {C // n_head} wide")
    f.size("intermediate_size", want=mlp_width("swiglu", C),
           why=f"b_lm's gated MLP for a hidden_size of {C} is {mlp_width('swiglu', C)} wide")
    f.name("hidden_act", "silu", ("silu",), "b_lm's gated MLP uses silu")
    rope = f.config.get("rope_parameters")
    if rope is not None and not isinstance(rope, dict):
        f.refuse("rope_parameters", f"must be an object, not {as_json(rope)}")
    rope = ConfigFields(rope or {}, f.where, "rope_parameters.")
    rope.name("rope_type", "default", ("default",), "b_lm's rotary embeddings are the default kind, unscaled")
    if f.config.get("rope_scaling") not in (None, {}):
        f.refuse("rope_scaling", f"is {as_json(f.config['rope_scaling'])}: b_lm's rotary embeddings are not scaled")
    thetas = []  # transformers 5 writes rope_parameters.rope_theta, 4 rope_theta, to_hf both; 10000 if neither
    for fields in (rope, f):
        theta = fields.number("rope_theta", None)
        if theta is not None and theta <= 0:
            fields.refuse("rope_theta", f"must be a number above 0, not {as_json(theta)}")
        thetas += [] if theta is None else [float(theta)]
        fields.number("partial_rotary_factor", 1.0, want=1.0, why="b_lm turns every dimension of a head")
    if len(thetas) == 2 and thetas[0] != thetas[1]:
        f.refuse("rope_theta", f"is {as_json(thetas[1])}, but rope_parameters.rope_theta is {as_json(thetas[0])}")
    norms = "RMSNorms" if kind == "llama" else "LayerNorms"
    f.number("rms_norm_eps" if kind == "llama" else "layer_norm_eps", EPS, want=EPS, why=f"b_lm's {norms} use {EPS}")
    for key in ("attention_bias", "mlp_bias", "use_qkv_bias"):
        f.flag(key, False, want=False, why="b_lm's rotary models have no biases")
    qk_norm = f.flag("qk_layernorm", False, want=False if kind == "llama" else None,
                     why="Llama normalises no queries and keys")
    f.flag("use_parallel_residual", False, want=False, why="b_lm's blocks run attention, then the MLP")
    return dict(block_size=block, n_layer=n_layer, n_head=n_head, n_embd=C, positions="rope",
                norm="rms" if kind == "llama" else "layer", mlp="swiglu", rope_theta=thetas[0] if thetas else 10000.0,
                tie_embeddings=f.flag("tie_word_embeddings", False), qk_norm=qk_norm)

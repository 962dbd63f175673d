"""The models: a mini decoder-only Transformer (GPT) and the CharRNN it grew out of.

Both map token ids (B, T) to next-token logits (B, T, vocab) and, given targets, the mean cross-entropy loss. Both
are built from a config dataclass whose fields are plain values, so the config travels inside checkpoints.
"""
import math
from dataclasses import MISSING, asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import shown


# The values each named part of a model config may take.
CHOICES = {"attention": ("sdpa", "explicit"), "gelu": ("exact", "tanh"), "positions": ("learned", "rope"),
           "norm": ("layer", "rms"), "mlp": ("gelu", "swiglu"), "cell": ("gru", "lstm")}
# Deeper than any model b_lm can train well, and a million layers would take minutes just to build.
MAX_LAYERS = 1000
# No other size of a model (heads, width, context, vocabulary) reaches this; a config that says so is damaged.
MAX_SIZE = 2 ** 24


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 128  # longest context the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear layers and LayerNorms
    # 'sdpa' uses F.scaled_dot_product_attention (fused kernels where the backend has them); 'explicit' spells out
    # matmul-softmax-matmul for backends that lack SDPA, such as DirectML. Both compute the same function.
    attention: str = "sdpa"
    # What GPT-2 checkpoints need (convert.py from-hf); b_lm's own models keep the defaults.
    tie_embeddings: bool = False  # the output head shares the token embedding's matrix
    gelu: str = "exact"  # or 'tanh', the approximation GPT-2 was trained with ('gelu_new')
    # The parts of a Llama-style block (they map onto transformers' LlamaForCausalLM), each an option of its own;
    # the defaults are GPT-2's, so a config saved before the parts existed builds the model it described.
    positions: str = "learned"  # or 'rope': rotary embeddings turn each head's queries and keys by position
    norm: str = "layer"  # or 'rms': RMSNorm, LayerNorm without the mean and the bias
    mlp: str = "gelu"  # or 'swiglu': the gated MLP silu(x W_gate) * (x W_up), then W_down
    rope_theta: float = 10000.0  # the longest rotary wavelength, in positions (2 pi theta)
    # A LayerNorm over each head's queries and keys (StableLM's qk_layernorm): bounds the attention scores.
    qk_norm: bool = False


def mlp_width(mlp, n_embd):
    """The MLP's hidden width: 4 * n_embd, or for the gated MLP, 2/3 of that rounded up to a multiple of 8. Two
    thirds keep the gated MLP's three matrices at the parameters (and FLOPs) of the plain MLP's two."""
    return 4 * n_embd if mlp == "gelu" else -(-8 * n_embd // 3 // 8) * 8


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.attention = config.attention
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.qk_norm = QKNorm(config.n_embd) if config.qk_norm else None
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None, layer=0, rope=None):
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs): each head attends independently. One view and one permute instead of a
        # split and three view/transposes: the same tensors, fewer ops, which matters when decoding one token at a time.
        qkv = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head)
        if rope is None and self.qk_norm is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:  # queries and keys are normalised and turned together: one set of ops for both
            qk = qkv[:, :, :2]
            if self.qk_norm is not None:
                qk = self.qk_norm(qk)
            if rope is not None:
                qk = rotate(qk, *rope)
            q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
            v = qkv[:, :, 2].transpose(1, 2)
        if kv_cache is None:
            y = attend(q, k, v, self.attention, self.dropout if self.training else 0.0)
        else:  # the new keys and values join those of earlier positions, which the new queries see too
            y = kv_cache.attend(layer, q, k, v, self.attention)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class QKNorm(nn.Module):
    """LayerNorm without a bias over each head's queries and keys, before the rotation, with a gain per head and
    dimension (StableLM's qk_layernorm). A score q.k is then bounded by the gains, however large the weights grow;
    without it a rotary model's scores run away when it is tuned at a high learning rate, and its attention collapses
    onto single tokens (RESULTS.md, 2026-12-01)."""

    def __init__(self, n_embd, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(2 * n_embd))  # the queries' gains, then the keys', head by head

    def forward(self, qk):  # (B, T, 2, nh, hs): one fused LayerNorm kernel for both
        return F.layer_norm(qk, qk.shape[-1:], eps=self.eps) * self.weight.view(qk.shape[2:])


def attend(q, k, v, kind="sdpa", dropout=0.0, mask=None):
    """Causal attention of q (B, nh, Tq, hs) over k, v (B, nh, Tk, hs), Tq <= Tk.

    The queries are the last Tq positions of the Tk keys (Tq < Tk when a KV cache holds the earlier ones), so query
    i may see keys up to Tk - Tq + i. A batch of sequences at different lengths (serving.py) passes its own mask
    instead: (B, 1, Tq, Tk) booleans, True where a query may attend.
    """
    Tq, Tk = q.size(-2), k.size(-2)
    if mask is None and 1 < Tq < Tk:
        mask = causal_mask(Tq, Tk, q.device)
    # A square is plain causal attention, and a single query (a decoding step with the cache) sees every key:
    # neither needs a mask tensor.
    square = mask is None and Tq > 1
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=square)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, Tq, Tk)
    if square:
        mask = causal_mask(Tq, Tk, q.device)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout, training=dropout > 0)
    return att @ v  # (B, nh, Tq, hs)


def rope_tables(config):
    """cos and signed sin (block_size, head_size) of rotary embeddings, in transformers' Llama layout.

    Each head's dimension i and i + head_size/2 form a pair, turned at position p by the angle
    p * theta^(-2i/head_size): slow turns carry distant positions, fast turns near ones. Attention scores then depend
    only on how far apart a query and a key are. The first half of the sin table carries the minus sign of the turn,
    so rotate needs no negation.
    """
    hs = config.n_embd // config.n_head
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-angles.sin(), angles.sin()], dim=-1)


def rotate(x, cos, signed_sin):
    """x (..., hs) turned by the rotary angles of its positions (tables from rope_tables, broadcast to x).

    A pair (a, b) turns to (a cos - b sin, b cos + a sin): x * cos plus the halves swapped times the signed sin.
    Three kernels, which matters when decoding one token at a time.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), signed_sin)


def causal_mask(Tq, Tk, device):
    """(Tq, Tk) booleans, True where query i (the last Tq of Tk positions) may attend."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = mlp_width(config.mlp, config.n_embd)
        self.gated = config.mlp == "swiglu"
        # The gated MLP's W_gate and W_up are one matrix: one matmul instead of two.
        self.fc = nn.Linear(config.n_embd, (2 if self.gated else 1) * hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = "tanh" if config.gelu == "tanh" else "none"

    def forward(self, x):
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.dropout(self.proj(h))


class RMSNorm(nn.Module):
    """x / rms(x) * weight: LayerNorm without centring or bias, cheaper and as good in practice."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def norm_layer(config):
    return RMSNorm(config.n_embd) if config.norm == "rms" else nn.LayerNorm(config.n_embd, bias=config.bias)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm_layer(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, layer=0, rope=None):
        x = x + self.attn(self.ln_1(x), kv_cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


def next_token_loss(logits, targets):
    """Mean cross-entropy of logits (B, T, vocab) against targets (B, T), skipping -1s; None without targets."""
    return None if targets is None else F.cross_entropy(logits.flatten(0, -2), targets.reshape(-1), ignore_index=-1)


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.positions == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # tables, not parameters: not in the state dict, rebuilt from the config
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = norm_layer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # Each block adds its output projections to the residual stream; shrinking them by depth keeps the stream's
        # variance from growing with n_layer (GPT-2).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, idx, targets=None, kv_cache=None):
        B, T = idx.shape
        if kv_cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            pos = torch.arange(T, device=idx.device)
        else:
            pos = kv_cache.positions(T, idx.device)  # (T,), or (1, T) for several sequences packed in one row
        x, rope = self.wte(idx), None  # (B, T, C)
        if self.config.positions == "learned":
            x = x + self.wpe(pos)
        else:  # (T, 1, 1, hs), or (B, T, 1, 1, hs) for rows at their own positions: one turn per position
            rope = self.rope_cos[pos][..., None, None, :], self.rope_sin[pos][..., None, None, :]
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, kv_cache, layer, rope)
        if kv_cache is not None:
            kv_cache.advance(T)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        return logits, next_token_loss(logits, targets)


@dataclass
class RNNConfig:
    vocab_size: int
    block_size: int = 128  # training sequence length (and generation context)
    n_layer: int = 2
    n_embd: int = 256  # embedding and hidden size
    cell: str = "gru"  # or "lstm"
    dropout: float = 0.0


class CharRNN(nn.Module):
    """The baseline the project started from: embedding -> GRU/LSTM -> linear."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        cell = {"gru": nn.GRU, "lstm": nn.LSTM}[config.cell]
        self.rnn = cell(config.n_embd, config.n_embd, num_layers=config.n_layer,
                        dropout=config.dropout if config.n_layer > 1 else 0.0, batch_first=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx, targets=None, kv_cache=None):
        out, _ = self.rnn(self.embed(idx))  # (B, T, C); each step sees only the past
        logits = self.lm_head(out)
        return logits, next_token_loss(logits, targets)


MODELS = {"transformer": (GPTConfig, Transformer), "rnn": (RNNConfig, CharRNN)}


def build_model(model_type, config):
    """Build a model from its type name and config (a dataclass or a plain dict); ValueError if it cannot be."""
    config = config if isinstance(config, dict) else asdict(config)
    problem = config_problem(model_type, config)
    if problem:
        raise ValueError(problem)
    config_cls, model_cls = MODELS[model_type]
    return model_cls(config_cls(**config))


def config_defaults(model_type):
    """{field: default} of a model type's config (vocab_size has none)."""
    return {f.name: f.default for f in fields(MODELS[model_type][0]) if f.default is not MISSING}


def config_problem(model_type, config, name=str):
    """What makes a model config (a dict) impossible to build, or None; `name` shows a field (train.py: as a flag).

    The one check of a model's shape, for flags and loaded checkpoints alike, made before anything is built: 1.5
    layers, True heads or 3 heads in a width of 16 would otherwise fail deep in the constructor. A field left out
    takes its default.
    """
    if model_type not in MODELS:
        return f"unknown model type {shown(model_type)}: choose one of {', '.join(MODELS)}"
    known = {f.name for f in fields(MODELS[model_type][0])}
    unknown = sorted(set(config) - known)
    if unknown:
        return f"unknown {model_type} config fields: {', '.join(unknown)}"
    c = {**config_defaults(model_type), **config}
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value, most = c.get(key, 1), MAX_LAYERS if key == "n_layer" else MAX_SIZE
        if key in known and (type(value) is not int or not 1 <= value <= most):
            return f"{name(key)} must be a whole number from 1 to {most:,}, not {shown(value)}"
    for key in ("bias", "tie_embeddings", "qk_norm"):
        if key in known and type(c[key]) is not bool:
            return f"{name(key)} must be true or false, not {shown(c[key])}"
    if type(c["dropout"]) not in (int, float) or not 0 <= c["dropout"] < 1:
        return f"{name('dropout')} must be a number from 0 to below 1, not {shown(c['dropout'])}"
    for key, kinds in CHOICES.items():
        if key in known and c[key] not in kinds:
            return f"unknown {name(key)} {shown(c[key])}: choose one of {', '.join(kinds)}"
    if model_type == "rnn":
        return None
    # Below 1 the rotary frequencies grow with the dimension instead of falling: the angles overflow.
    if type(c["rope_theta"]) not in (int, float) or not 1 < c["rope_theta"] < math.inf:
        return f"{name('rope_theta')} must be a number above 1, not {shown(c['rope_theta'])}"
    if c["n_embd"] % c["n_head"]:
        return f"{name('n_head')} {c['n_head']} does not divide {name('n_embd')} {c['n_embd']}"
    if c["positions"] == "rope" and c["n_embd"] // c["n_head"] % 2:
        return (f"{name('positions')} rope needs an even head size ({name('n_embd')} / {name('n_head')}), "
                f"not {c['n_embd'] // c['n_head']}")
    return None


def model_type_of(model):
    """The name build_model knows the model's class by: 'transformer' or 'rnn'."""
    return next(name for name, (_, cls) in MODELS.items() if isinstance(model, cls))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def rope_table_floats(model_type, config):
    """Floats in the rotary tables a config makes (cos and sin, block_size x head_size each), from the config
    alone: buffers, not parameters, but memory all the same."""
    c = config if isinstance(config, dict) else vars(config)
    if model_type == "rnn" or c.get("positions") != "rope":
        return 0
    return 2 * int(c.get("block_size", 0)) * (int(c.get("n_embd", 0)) // max(1, int(c.get("n_head", 1))))


def estimate_parameters(model_type, config):
    """About how many parameters build_model(model_type, config) would make, from the config alone: arithmetic, not
    construction, since a config asking for 10**20 layers must be refused at once, and building even an empty
    skeleton of it never ends."""
    c = config if isinstance(config, dict) else vars(config)
    V, T, L, C = (int(c.get(k, 0)) for k in ("vocab_size", "block_size", "n_layer", "n_embd"))
    if model_type == "rnn":
        gates = 4 if c.get("cell") == "lstm" else 3
        return 2 * V * C + L * gates * (2 * C * C + 2 * C)
    mlp = (3 if c.get("mlp") == "swiglu" else 2) * C * mlp_width(c.get("mlp", "gelu"), C)
    positions = 0 if c.get("positions") == "rope" else T * C
    qk_norm = 2 * C if c.get("qk_norm") else 0
    return (1 if c.get("tie_embeddings") else 2) * V * C + positions + L * (4 * C * C + mlp + 13 * C + qk_norm)

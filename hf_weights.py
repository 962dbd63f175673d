"""The weight maps between b_lm's Transformer and GPT-2, Llama and StableLM, one table each, read both ways. A map
is a list of links: (our parameter, [(their tensor, its shape)], transposed). GPT-2 stores its linear layers as
`Conv1D`, whose weight is the transpose of `nn.Linear`'s; our fused qkv and gate-up matrices are their q/k/v and
gate/up projections stacked. Biases b_lm's model lacks are written as zeros, and zeros read back as none."""
import os
import re

import torch
from safetensors.torch import load_file

from checkpoint import dtype_problem, read_pickled
from errors import UserError, short_reason
from transformer import mlp_width

# The token embedding's name, and the prefix every name but lm_head's has in a file to_hf writes.
EMBEDDING = {"gpt2": ("wte.weight", "transformer."), "llama": ("model.embed_tokens.weight", ""),
             "stablelm": ("model.embed_tokens.weight", "")}
# Buffers, not weights, that transformers itself skips when it loads a folder: GPT-2's causal masks (in
# older files) and the rotary frequencies of older Llama files. b_lm rebuilds both from the config.
ROTARY_BUFFERS = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
BUFFERS = {"gpt2": r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias", "llama": ROTARY_BUFFERS, "stablelm": ROTARY_BUFFERS}


def weight_map(kind, c):
    """The links of every tensor but the embedding and the head, for a GPTConfig as the architecture `kind`."""
    C, H = c.n_embd, mlp_width(c.mlp, c.n_embd)
    if kind == "gpt2":  # Conv1D holds the transpose of our weight, (in, out); every layer has a bias
        layer, final, bias, norm_bias = "h.{}.", "ln_f", True, True
        block = [("ln_1", ["ln_1"], (C,), False), ("attn.qkv", ["attn.c_attn"], (C, 3 * C), True),
                 ("attn.proj", ["attn.c_proj"], (C, C), True), ("ln_2", ["ln_2"], (C,), False),
                 ("mlp.fc", ["mlp.c_fc"], (C, H), True), ("mlp.proj", ["mlp.c_proj"], (H, C), True)]
    else:  # biases only in StableLM's LayerNorms and in a Llama trained with --bias
        layer, final, bias, norm_bias = "model.layers.{}.", "model.norm", c.bias, c.norm == "layer"
        block = [("attn.qkv", [f"self_attn.{x}_proj" for x in "qkv"], (C, C), False),
                 ("attn.proj", ["self_attn.o_proj"], (C, C), False),
                 ("mlp.fc", ["mlp.gate_proj", "mlp.up_proj"], (H, C), False),
                 ("mlp.proj", ["mlp.down_proj"], (C, H), False),
                 ("ln_1", ["input_layernorm"], (C,), False), ("ln_2", ["post_attention_layernorm"], (C,), False)]
    links = []
    for i in range(c.n_layer):
        for ours, theirs, shape, transposed in block:
            links += _links(f"blocks.{i}.{ours}", [layer.format(i) + t for t in theirs], shape, transposed,
                            norm_bias if len(shape) == 1 else bias)
        if c.qk_norm:  # StableLM: one LayerNorm (no bias) per head for the queries, one per head for the keys
            links += _links(f"blocks.{i}.attn.qk_norm", [f"{layer.format(i)}self_attn.{x}_layernorm.norms.{h}"
                                                         for x in "qk" for h in range(c.n_head)],
                            (C // c.n_head,), False, False)
    links += _links("ln_f", [final], (C,), False, norm_bias)
    return links + ([("wpe.weight", [("wpe.weight", (c.block_size, C))], False)] if kind == "gpt2" else [])


def _links(ours, theirs, shape, transposed, bias):
    """The links of one layer's weight and, with bias, its bias (a Conv1D's is its weight's second dimension)."""
    links = [(f"{ours}.weight", [(f"{t}.weight", shape) for t in theirs], transposed)]
    if bias:
        links.append((f"{ours}.bias", [(f"{t}.bias", shape[1:] if transposed else shape[:1]) for t in theirs], False))
    return links


def to_hf_weights(kind, c, ours):
    """{their name: tensor} from our state dict, which it empties as it goes: converting needs little extra memory."""
    embedding, prefix = EMBEDDING[kind]
    out = {prefix + embedding: ours.pop("wte.weight")}
    for mine, theirs, transposed in weight_map(kind, c):
        tensor = ours.pop(mine, None)
        if tensor is None:  # a bias our model lacks (checked_tokenizer saw every weight)
            tensor = torch.zeros(theirs[0][1])
        parts = [tensor.t()] if transposed else tensor.split([shape[0] for _, shape in theirs])
        out.update((prefix + name, part) for (name, _), part in zip(theirs, parts))
    head = ours.pop("lm_head.weight")
    if not c.tie_embeddings:  # tied, it is the embedding, which is written already
        out["lm_head.weight"] = head
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_weights(kind, c, weights, where):
    """(our tensors but the embedding and head, whether any bias is not zero) from {their name: tensor}, which
    it empties as it goes; UserError naming the first tensor that is missing or not the shape the config makes."""
    ours, bias = {}, False
    for mine, theirs, transposed in weight_map(kind, c):
        parts = []
        for name, shape in theirs:
            tensor = weights.pop(name, None)
            if tensor is None or tuple(tensor.shape) != shape:
                found = "missing" if tensor is None else tuple(tensor.shape)
                raise UserError(f"{where}: {name} is {found}, the config makes it {shape}")
            parts.append(tensor)
        ours[mine] = parts[0].t() if transposed else parts[0] if len(parts) == 1 else torch.cat(parts)
        if mine.endswith(".bias") and ours[mine].any():
            if kind != "gpt2":
                raise UserError(f"{where}: {theirs[0][0]} is not zero, and b_lm's LayerNorms have no bias")
            bias = True
    if not bias:  # a zero bias is no bias: a model exported from b_lm without biases comes back without them
        ours = {k: v for k, v in ours.items() if not k.endswith(".bias")}
    return ours, bias


def read_weights(in_dir, kind):
    """({name: tensor}, {name: name in the file} where they differ) from model.safetensors, or pytorch_model.bin
    read with weights_only (it can run no code). GPT-2's names lose the "transformer." that GPT2LMHeadModel's files
    have and GPT2Model's lack."""
    safetensors = os.path.join(in_dir, "model.safetensors")
    path = safetensors if os.path.isfile(safetensors) else os.path.join(in_dir, "pytorch_model.bin")
    if not os.path.isfile(path):
        raise UserError(f"{in_dir} has neither model.safetensors nor pytorch_model.bin")
    try:
        weights = load_file(path) if path == safetensors else read_pickled(path)
    except Exception as e:  # damaged or foreign files fail their reader in many ways
        raise UserError(f"{path}: cannot read its weights safely ({short_reason(e)})") from None
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                for k, t in weights.items()):
        raise UserError(f"{path}: cannot read its weights safely (it holds no state dict of tensors)")
    weights = {k: t for k, t in weights.items() if not re.fullmatch(BUFFERS[kind], k)}
    problem = dtype_problem(weights)
    if problem:
        raise UserError(f"{path}: {problem}")
    names = {k: k.removeprefix(EMBEDDING[kind][1]) for k in weights}
    if len(set(names.values())) < len(names):
        twice = next(k for k in weights if k != names[k] and names[k] in weights)
        raise UserError(f"{in_dir}: its weights hold both {_names([twice])} and {_names([names[twice]])}")
    return {names[k]: t for k, t in weights.items()}, {v: k for k, v in names.items() if k != v}


def embedding_and_head(kind, c, weights, file_names, vocab, hf_to_ours, in_dir):
    """Our wte.weight and lm_head.weight, rows in our token order (hf_to_ours), from the weights the blocks left,
    which must be all of them; tokens the model lacks get the mean row. vocab: config.json's vocab_size, or None."""
    embedding = EMBEDDING[kind][0]
    wte, head = weights.pop(embedding, None), weights.pop("lm_head.weight", None)
    if weights:  # a tensor the model does not use belongs to a model b_lm would not build
        names = sorted(file_names.get(name, name) for name in weights)
        raise UserError(f"{in_dir}: its weights hold {len(names)} tensor(s) the model its config.json describes "
                        f"does not use ({_names(names)}): another architecture, or more layers than it says")
    if c.tie_embeddings and head is not None and wte is not None and (
            head.shape != wte.shape or head.dtype != wte.dtype or not torch.equal(head, wte)):
        raise UserError(f"{in_dir}: lm_head.weight differs from {embedding}, though tie_word_embeddings says they "
                        f"are one matrix")

    def rows(matrix, name):
        need = max(hf_to_ours) + 1
        if matrix is None or matrix.dim() != 2 or matrix.shape[1] != c.n_embd or matrix.shape[0] < need:
            shape = None if matrix is None else tuple(matrix.shape)
            raise UserError(f"{in_dir}: {name} is {shape}; the tokenizer and config need ({need}+, {c.n_embd})")
        if vocab is not None and matrix.shape[0] != vocab:
            raise UserError(f"{in_dir}: {name} has {matrix.shape[0]} rows, but config.json's vocab_size is {vocab}")
        ordered = matrix.float().mean(0, keepdim=True).repeat(c.vocab_size, 1)
        ordered[list(hf_to_ours.values())] = matrix.float()[list(hf_to_ours)]
        return ordered

    # The old matrices are dropped as soon as the new ones exist.
    wte = rows(wte, embedding)
    return {"wte.weight": wte, "lm_head.weight": wte if c.tie_embeddings else rows(head, "lm_head.weight")}


def _names(names):
    """A few names from a list, printable, for a message: 'a, b, c and 4 more'."""
    listed = ", ".join(n[:80] if n.isprintable() else repr(n)[:80] for n in names[:3])
    return listed + (f" and {len(names) - 3} more" if len(names) > 3 else "")

"""Train a language model on a text file.

    python train.py                              # char-level Transformer on data.txt
    python train.py --max-iters 200 --resume     # continue checkpoint.pth
    python train.py --model rnn                  # the CharRNN baseline

The last --val-fraction of the token stream is held out for validation. Every --eval-interval steps we print train
and val loss, val perplexity and val bits per character (comparable across tokenizers), and save checkpoint.pth. The
loop itself is trainer.py's, shared with sft.py.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from data import corpus_batches
from device import attention_for, check_fits_in_memory
from errors import UserError, run_main
from flags import FIXED, LOCAL, Rule, flag_name, setting
from tasks import TextTask
from tokenizer_io import load_tokenizer
from run_config import TrainConfig, claimed_outputs, parse_command_line, resumed_run, training_processes
from trainer import Run, train
from transformer import (CHOICES, MAX_LAYERS, MODELS, GPTConfig, build_model, config_problem, count_parameters,
                         estimate_parameters, rope_table_floats)

GPT = GPTConfig.__dataclass_fields__  # the model's own defaults are the flags' defaults
# What an --init-from run takes from its checkpoint's model config into its own settings.
INIT_FROM_SHAPE = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "positions", "norm", "mlp",
                   "qk_norm")


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """A pretraining run: the loop's settings, its text and tokenizer, and the shape of the model it builds."""
    data: str = setting("data.txt", "training text, UTF-8")
    tokenizer: Optional[str] = setting(None, "'char', or a tokenizer.json from train_tokenizer.py (default: char; "
                                             "with --resume or --init-from, the checkpoint's)", resume=LOCAL)
    init_from: Optional[str] = setting(
        None, "start from this checkpoint's weights, tokenizer and shape (b_lm's own, or one convert.py imported) and "
        "train it on --data with a fresh optimizer and schedule (default: a new model)", resume=LOCAL, metavar="CKPT")
    model: str = setting("transformer", "architecture", choices=list(MODELS), resume=FIXED)
    # The model's shape is checked by the model's own check (transformer.config_problem), in __post_init__.
    n_layer: int = setting(4, f"layers, 1 to {MAX_LAYERS}", resume=FIXED)
    n_head: int = setting(4, "attention heads, dividing --n-embd", resume=FIXED)
    n_embd: int = setting(128, "embedding width; RNN hidden size", resume=FIXED)
    block_size: int = setting(128, "context length in tokens", resume=FIXED)
    dropout: float = setting(0.0, "dropout rate, in [0, 1)", resume=FIXED)
    bias: bool = setting(False, "use biases in Linear and LayerNorm layers", resume=FIXED)
    attention: str = setting("auto", "sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, which "
                                     "DirectML runs natively; auto: explicit on DirectML, else sdpa",
                             choices=["auto", "sdpa", "explicit"], resume=FIXED)
    positions: str = setting(GPT["positions"].default, "learned: a position embedding (GPT-2); rope: rotary "
                             "embeddings of queries and keys (Llama)", choices=CHOICES["positions"], resume=FIXED)
    norm: str = setting(GPT["norm"].default, "layer: LayerNorm (GPT-2); rms: RMSNorm (Llama)", choices=CHOICES["norm"],
                        resume=FIXED)
    mlp: str = setting(GPT["mlp"].default, "gelu: 4x GELU MLP (GPT-2); swiglu: gated MLP of a 4x MLP's size "
                       "(Llama)", choices=CHOICES["mlp"], resume=FIXED)
    qk_norm: bool = setting(GPT["qk_norm"].default, "LayerNorm each head's queries and keys before attention "
                                                    "(StableLM's qk_layernorm)", resume=FIXED)
    rnn_cell: str = setting("gru", "cell of --model rnn", choices=CHOICES["cell"], resume=FIXED)
    val_fraction: float = setting(0.1, "last fraction of the tokens held out; without validation text there is "
                                       "no val loss", Rule("in (0, 1)", lambda v: 0 < v < 1), resume=FIXED)

    def __post_init__(self):
        super().__post_init__()
        if problem := config_problem(self.model, self.model_config(vocab_size=1, device="cpu"),
                                     name=lambda field: "--rnn-cell" if field == "cell" else flag_name(field)):
            raise UserError(problem)

    def model_config(self, vocab_size, device):
        both = dict(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer, n_embd=self.n_embd,
                    dropout=self.dropout)
        if self.model == "rnn":
            return dict(both, cell=self.rnn_cell)
        return dict(both, n_head=self.n_head, bias=self.bias, attention=attention_for(device, self.attention),
                    positions=self.positions, norm=self.norm, mlp=self.mlp, qk_norm=self.qk_norm)


def check_model_flags(settings, given):
    """UserError for a model flag the run would ignore: a shape flag with --init-from (the checkpoint's shape is
    trained), a Transformer's flag with --model rnn, --rnn-cell with a Transformer."""
    ignored = {"init_from": INIT_FROM_SHAPE + ("model", "attention", "rnn_cell"),
               "rnn": ("n_head", "bias", "attention", "positions", "norm", "mlp", "qk_norm"),
               "transformer": ("rnn_cell",)}
    why = ("--init-from: the checkpoint's model is trained as it is" if settings.init_from
           else f"--model {settings.model}: that model has no such part")
    for name in ignored["init_from" if settings.init_from else settings.model]:
        if name in given:
            raise UserError(f"{flag_name(name)} does not combine with {why}")


def check_resumed_tokenizer(settings, checkpoint):
    """UserError unless a --tokenizer given with --resume is the one inside the checkpoint."""
    kind = checkpoint["tokenizer"].get("kind")
    if settings.tokenizer == "char" and kind != "char":
        raise UserError(f"{settings.ckpt} was trained with a {kind} tokenizer, not 'char'")
    if settings.tokenizer and settings.tokenizer != "char" and \
            load_tokenizer(settings.tokenizer, settings.data).to_dict() != checkpoint["tokenizer"]:
        raise UserError(f"{settings.tokenizer} does not match the tokenizer inside {settings.ckpt}; "
                        f"resume without --tokenizer to use the checkpoint's")


def main(argv=None):
    settings, invocation = parse_command_line(PretrainConfig, "Train a GPT-style Transformer (or a CharRNN) on a "
                                                              "text file.", argv)
    with claimed_outputs(settings, invocation, inputs=["data", "tokenizer", "init_from"]):
        return pretrain(settings, invocation)


def pretrain(settings, invocation):
    """Train a new model, or --resume's or --init-from's checkpoint with its tokenizer and shape."""
    checkpoint = None
    if settings.init_from:
        if invocation.resume or settings.tokenizer:
            raise UserError("--init-from starts a new run from a checkpoint, with its tokenizer: it does not "
                            "combine with --resume or --tokenizer")
        checkpoint = load_checkpoint(settings.init_from)
    elif invocation.resume:
        settings, checkpoint = resumed_run(settings, invocation)
        check_resumed_tokenizer(settings, checkpoint)
    check_model_flags(settings, invocation.given)
    with training_processes(settings.device) as (procs, device):
        if checkpoint:
            torch.manual_seed(settings.seed)
            model, tokenizer = model_from_checkpoint(checkpoint, device, settings.init_from or settings.ckpt)
            if settings.init_from:  # the run records the shape it trains
                settings = replace(settings, model=checkpoint["model_type"], **{
                    k: v for k, v in checkpoint["model_config"].items() if k in INIT_FROM_SHAPE})
        else:
            model, tokenizer = new_model(settings, device)
        batches = corpus_batches(settings.data, tokenizer, settings.block_size, settings.val_fraction, settings.seed,
                                 settings.data_order)
        description = (f"{settings.model}: {count_parameters(model) / 1e6:.2f}M parameters, {tokenizer.kind} "
                       f"tokenizer ({tokenizer.vocab_size} tokens), {len(batches.train):,} train / "
                       f"{len(batches.val):,} val tokens")
        resumed = checkpoint if invocation.resume else None
        task = TextTask(batches, settings.batch_size, tokenizer.token_chars())
        return train(Run(settings, model.train(), tokenizer, task, procs, device, description,
                         run_config=asdict(settings), chat=bool(resumed and resumed.get("chat")), resume_from=resumed))


def new_model(settings, device):
    """(model, tokenizer) for a fresh run, once the model surely fits in the device's memory."""
    tokenizer = load_tokenizer(settings.tokenizer or "char", settings.data)
    config = settings.model_config(tokenizer.vocab_size, device)
    what = f"a model of {settings.n_layer} layers, {settings.n_embd} wide, context {settings.block_size},"
    check_fits_in_memory(estimate_parameters(settings.model, config), device,
                         extra_bytes=4 * rope_table_floats(settings.model, config), what=what)
    torch.manual_seed(settings.seed)
    return build_model(settings.model, config).to(device), tokenizer


if __name__ == "__main__":
    run_main(main)

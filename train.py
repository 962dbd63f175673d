"""Train a language model on a text file.

    python train.py                              # char-level Transformer on data.txt
    python train.py --max-iters 200 --resume     # continue checkpoint.pth
    python train.py --model rnn                  # the CharRNN baseline

The last --val-fraction of the token stream is held out for validation. Every
--eval-interval steps we print train and val loss, val perplexity and val bits
per character (comparable across tokenizers), and save checkpoint.pth. The
loop itself is trainer.py's, shared with sft.py.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from data import corpus_batches
from device import attention_for, check_fits_in_memory
from errors import ArgumentParser, UserError, run_main
from tasks import TextTask
from tokenizer_io import load_tokenizer
from trainer import (Run, add_training_flags, check_input_files, check_training_args, claimed_outputs, given_flags,
                     resumed_run, train, training_processes)
from transformer import (DEFAULT_PARTS, GPT2_PARTS, MAX_LAYERS, MLP_KINDS, MODELS, NORM_KINDS, POSITION_KINDS,
                         build_model, count_parameters, estimate_parameters, rope_table_floats)

# Flags that define the model and the optimizer whose saved state only fits
# itself: a resumed run takes them from the checkpoint, and may not change them.
FIXED_ON_RESUME = ("model", "n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "attention", "positions",
                 "norm", "mlp", "rnn_cell",
                 "optimizer", "lr", "muon_lr", "weight_decay", "muon_weight_decay", "beta2", "val_fraction")


def parse_args(argv=None):
    p = ArgumentParser(description="Train a GPT-style Transformer (or a CharRNN) on a text file.")
    a = p.add_argument
    a("--data", default="data.txt", help="training text, UTF-8 (default: %(default)s)")
    a("--tokenizer", default=None,
      help="'char', or a tokenizer.json from train_tokenizer.py (default: char; with --resume or --init-from, "
           "the checkpoint's)")
    a("--init-from", default=None, metavar="CKPT",
      help="start from this checkpoint's weights, tokenizer and shape (b_lm's own, or one convert.py imported) "
           "and train it on --data with a fresh optimizer and schedule (default: a new model)")
    a("--model", default="transformer", choices=list(MODELS), help="architecture (default: %(default)s)")
    a("--n-layer", type=int, default=4, help=f"layers, 1 to {MAX_LAYERS} (default: %(default)s)")
    a("--n-head", type=int, default=4, help="attention heads, >= 1, dividing --n-embd (default: %(default)s)")
    a("--n-embd", type=int, default=128, help="embedding width; RNN hidden size, >= 1 (default: %(default)s)")
    a("--block-size", type=int, default=128, help="context length in tokens, >= 1 (default: %(default)s)")
    a("--dropout", type=float, default=0.0, help="dropout rate, in [0, 1) (default: %(default)s)")
    a("--bias", action="store_true", help="use biases in Linear and LayerNorm layers")
    a("--attention", default="auto", choices=["auto", "sdpa", "explicit"],
      help="sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, which DirectML runs natively; "
           "auto: explicit on DirectML, else sdpa (default: %(default)s)")
    a("--positions", default=DEFAULT_PARTS["positions"], choices=POSITION_KINDS,
      help="learned: a position embedding (GPT-2); rope: rotary embeddings of queries and keys (Llama) "
           "(default: %(default)s)")
    a("--norm", default=DEFAULT_PARTS["norm"], choices=NORM_KINDS,
      help="layer: LayerNorm (GPT-2); rms: RMSNorm (Llama) (default: %(default)s)")
    a("--mlp", default=DEFAULT_PARTS["mlp"], choices=MLP_KINDS,
      help="gelu: 4x GELU MLP (GPT-2); swiglu: gated MLP of a 4x MLP's size (Llama) (default: %(default)s)")
    a("--rnn-cell", default="gru", choices=["gru", "lstm"], help="cell of --model rnn (default: %(default)s)")
    a("--val-fraction", type=float, default=0.1,
      help="last fraction of the tokens held out, in (0, 1) (default: %(default)s)")
    add_training_flags(p, muon_lr=0.06, min_lr_ratio=0.0, muon_weight_decay=0.1)
    args = p.parse_args(argv)
    args.given = given_flags(p, argv, args)
    check_args(args)
    return args


def check_args(args):
    check_training_args(args)
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n_layer > MAX_LAYERS:
        raise UserError(f"--n-layer must be at most {MAX_LAYERS}, got {args.n_layer}")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1): without validation text there is no val loss, "
                        f"got {args.val_fraction}")
    if not 0 <= args.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.model == "transformer" and args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    if args.model == "transformer" and args.positions == "rope" and args.n_embd // args.n_head % 2:
        raise UserError(f"--positions rope needs an even head size (--n-embd / --n-head), got "
                        f"{args.n_embd // args.n_head}")


def model_config(args, vocab_size, device):
    if args.model == "transformer":
        return dict(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd, dropout=args.dropout, bias=args.bias,
                    attention=attention_for(device, args.attention), positions=args.positions, norm=args.norm,
                    mlp=args.mlp)
    return dict(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer, n_embd=args.n_embd,
                cell=args.rnn_cell, dropout=args.dropout)


def check_resumed_tokenizer(args, checkpoint):
    """UserError unless a --tokenizer given with --resume is the one inside the checkpoint."""
    kind = checkpoint["tokenizer"].get("kind")
    if args.tokenizer == "char" and kind != "char":
        raise UserError(f"{args.ckpt} was trained with a {kind} tokenizer, not 'char'")
    if args.tokenizer and args.tokenizer != "char" and \
            load_tokenizer(args.tokenizer, args.data).to_dict() != checkpoint["tokenizer"]:
        raise UserError(f"{args.tokenizer} does not match the tokenizer inside {args.ckpt}; "
                        f"resume without --tokenizer to use the checkpoint's")


def main(argv=None):
    args = parse_args(argv)
    check_input_files(args, ["--data", "--tokenizer", "--init-from"])
    with claimed_outputs(args, inputs=[args.data, args.tokenizer, args.init_from]):
        return pretrain(args)


def pretrain(args):
    """Train a new model, or --resume's or --init-from's checkpoint with its tokenizer and shape."""
    checkpoint = None
    if args.init_from:
        if args.resume or args.tokenizer:
            raise UserError("--init-from starts a new run from a checkpoint, with its tokenizer: it does not "
                            "combine with --resume or --tokenizer")
        checkpoint = load_checkpoint(args.init_from)
        for name in ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", *GPT2_PARTS):
            # a config saved before the parts existed has GPT-2's
            setattr(args, name, checkpoint["model_config"].get(name, GPT2_PARTS.get(name, getattr(args, name))))
        args.model = checkpoint["model_type"]
    elif args.resume:
        checkpoint = resumed_run(args, FIXED_ON_RESUME, own=("init_from", "tokenizer"))
        check_args(args)
        check_resumed_tokenizer(args, checkpoint)
    with training_processes(args.device) as (procs, device):
        if checkpoint:
            torch.manual_seed(args.seed)
            model, tokenizer = model_from_checkpoint(checkpoint, device, args.init_from or args.ckpt)
            model.train()
        else:
            tokenizer = load_tokenizer(args.tokenizer or "char", args.data)
            config = model_config(args, tokenizer.vocab_size, device)
            check_fits_in_memory(estimate_parameters(args.model, config), device,
                                 extra_bytes=4 * rope_table_floats(args.model, config),
                                 what=f"a model of {args.n_layer} layers, {args.n_embd} wide, context "
                                      f"{args.block_size},")
            torch.manual_seed(args.seed)
            model = build_model(args.model, config).to(device)
        batches = corpus_batches(args.data, tokenizer, args.block_size, args.val_fraction, args.seed)
        description = (f"{args.model}: {count_parameters(model) / 1e6:.2f}M parameters, {tokenizer.kind} tokenizer "
                       f"({tokenizer.vocab_size} tokens), {len(batches.train):,} train / {len(batches.val):,} "
                       f"val tokens")
        resumed = checkpoint if args.resume else None
        task = TextTask(batches, args.batch_size, tokenizer.token_chars())
        return train(Run(args, model, tokenizer, task, procs, device, description, train_args=vars(args),
                         chat=bool(resumed and resumed.get("chat")), resume_from=resumed))


if __name__ == "__main__":
    run_main(main)

"""Move models between b_lm and the Hugging Face format (GPT-2, StableLM, Llama), and out to GGUF (llama.cpp).

    python convert.py to-hf checkpoint.pth hf_model/     # then transformers loads hf_model/
    python convert.py from-hf gpt2/ gpt2.pth             # a GPT-2 directory you downloaded
    python convert.py to-gguf checkpoint.pth model.gguf  # then llama.cpp, Ollama or LM Studio loads model.gguf

to-hf writes a folder (a chat model's with its chat template) that transformers' `AutoModelForCausalLM` and
`AutoTokenizer` load without b_lm; from-hf a checkpoint that every b_lm script uses like its own; to-gguf one file
with the model, its tokenizer and a chat model's template.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import os
import shutil
import tempfile

from checkpoint import checked_tokenizer, checkpoint_dict, load_checkpoint, save_checkpoint
from errors import ArgumentParser, UserError, run_main
from files import (atomic_path, check_output_folder, check_output_path, claimed, refuse_existing, swap_in_folder,
                   temporary_prefix)
from gguf_export import DTYPES, gguf_problem, write_gguf
from hf import from_hf, is_b_lm_export, to_hf


def export(args):
    out = args.out_dir
    check_output_folder(out, "OUT_DIR", [args.ckpt], args.overwrite, ours=is_b_lm_export)
    with claimed(out, "OUT_DIR"):  # and clear what an export killed halfway left beside it
        checkpoint = load_checkpoint(args.ckpt)
        tokenizer = checked_tokenizer(checkpoint, args.ckpt)
        c, chat = checkpoint["model_config"], checkpoint.get("chat")
        # Write beside it, then swap it in: a failed export never leaves half a model where a whole one was.
        staging = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)), prefix=temporary_prefix(out),
                                   suffix=".tmp")
        try:
            to_hf(checkpoint, tokenizer, staging)
            swap_in_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {out}: {c.get('n_layer')} layers, {c.get('n_embd')} wide, vocab {tokenizer.vocab_size}, "
          f"{tokenizer.kind} tokenizer" + (", chat template" if chat else ""))


def import_(args):
    if not os.path.isdir(args.in_dir):
        raise UserError(f"{args.in_dir} is not a folder: give the directory of a Hugging Face model")
    check_output_path(args.ckpt, "CKPT", [args.in_dir])
    with claimed(args.ckpt, "CKPT"):
        refuse_existing(args.ckpt, "CKPT", args.overwrite)
        config, weights, tokenizer, chat = from_hf(args.in_dir)
        shape = {k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")}
        run_config = {"model": "transformer", **shape, "data": None, "imported_from": os.path.abspath(args.in_dir)}
        checkpoint = checkpoint_dict("transformer", config, weights, tokenizer, run_config=run_config, chat=chat)
        checked_tokenizer(checkpoint, args.in_dir)  # checked as every checkpoint is before it is used
        save_checkpoint(args.ckpt, checkpoint)
    print(f"wrote {args.ckpt}: {config['n_layer']} layers, {config['n_embd']} wide, context {config['block_size']}, "
          f"vocab {tokenizer.vocab_size} ({tokenizer.kind})" + (", a chat model" if chat else ""))


def export_gguf(args):
    check_output_path(args.file, "FILE", [args.ckpt])
    with claimed(args.file, "FILE"):
        refuse_existing(args.file, "FILE", args.overwrite)
        checkpoint = load_checkpoint(args.ckpt)
        tokenizer = checked_tokenizer(checkpoint, args.ckpt)
        if problem := gguf_problem(checkpoint, tokenizer):
            raise UserError(f"{args.ckpt}: {problem}")
        with atomic_path(args.file) as staging:  # a failed export never leaves half a file under the name
            kind = write_gguf(checkpoint, tokenizer, staging, os.path.splitext(os.path.basename(args.ckpt))[0],
                              args.dtype)
    c = checkpoint["model_config"]
    print(f"wrote {args.file}: {os.path.getsize(args.file) / 1e6:.1f} MB, {args.dtype}, llama.cpp's {kind}, "
          f"{c['n_layer']} layers, {c['n_embd']} wide, vocab {tokenizer.vocab_size}, {tokenizer.kind} tokenizer"
          + (", chat template" if checkpoint.get("chat") else ""))


def main(argv=None):
    parser = ArgumentParser(description="Convert between b_lm checkpoints and Hugging Face model folders "
                                        "(GPT-2, StableLM, Llama), or write a GGUF file for llama.cpp.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    to = commands.add_parser("to-hf", help="b_lm checkpoint -> Hugging Face folder", description=(
        "Write a b_lm checkpoint as a Hugging Face folder: GPT-2 for the default parts (learned/layer/gelu), "
        "StableLM for rope/layer/swiglu, Llama for rope/rms/swiglu."))
    to.add_argument("ckpt", help="the b_lm checkpoint")
    to.add_argument("out_dir", help="the folder to write: new, empty, or with --overwrite an earlier export")
    to.add_argument("--overwrite", action="store_true",
                    help="replace out_dir if it is an earlier export of convert.py to-hf holding nothing else")
    to.set_defaults(run=export)
    back = commands.add_parser("from-hf", help="Hugging Face folder -> b_lm checkpoint",
                               description="Read a Hugging Face GPT-2 folder, or a Llama or StableLM folder in "
                                           "the shape of b_lm's rotary models, into a b_lm checkpoint.")
    back.add_argument("in_dir", help="the Hugging Face model folder (config.json, model.safetensors, tokenizer)")
    back.add_argument("ckpt", help="the b_lm checkpoint to write")
    back.add_argument("--overwrite", action="store_true", help="replace ckpt if it exists")
    back.set_defaults(run=import_)
    gguf = commands.add_parser("to-gguf", help="b_lm checkpoint -> GGUF file (llama.cpp)", description=(
        "Write a b_lm checkpoint as one GGUF file, for llama.cpp and the apps built on it: GPT-2's block (the "
        "default) as llama.cpp's gpt2, rope/layer/swiglu (with or without --qk-norm) as stablelm, rope/rms/swiglu "
        "as llama; a character or BPE tokenizer, a chat model's template."))
    gguf.add_argument("ckpt", help="the b_lm checkpoint")
    gguf.add_argument("file", help="the .gguf file to write")
    gguf.add_argument("--dtype", choices=DTYPES, default="f32", help="how the weight matrices are stored "
                      "(default: %(default)s; f16 halves the file, q8_0 about quarters it)")
    gguf.add_argument("--overwrite", action="store_true", help="replace file if it exists")
    gguf.set_defaults(run=export_gguf)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    run_main(main)

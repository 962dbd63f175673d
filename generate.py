"""Sample text from a trained checkpoint.

    python generate.py --ckpt checkpoint.pth --start "Sing, " --length 300 --temp 0.8
"""
import sys

from checkpoint import load_model
from device import choose_device
from errors import ArgumentParser, run_main
from sampling import add_sampling_flags, check_sampling_args, generate_ids
from tokenizer import ENDOFTEXT, StreamDecoder


def prompt_ids(tokenizer, text):
    """Token ids of the prompt; an empty prompt starts from a newline (or <|endoftext|>)."""
    if text:
        return tokenizer.encode(text)
    try:
        return tokenizer.encode("\n")
    except Exception:  # a vocabulary without a newline
        return [tokenizer.special_tokens[ENDOFTEXT]]


def stream_text(model, tokenizer, prompt, length, temp=0.8, top_k=0, top_p=1.0, seed=None,
                use_cache=True, stop_ids=(), banned_ids=None):
    """Yield the continuation of `prompt` as pieces of text, as they are sampled.

    Plain text never contains special tokens, so by default none is sampled.
    """
    if banned_ids is None:
        banned_ids = tuple(tokenizer.special_tokens.values())
    decoder = StreamDecoder(tokenizer)
    for token in generate_ids(model, prompt_ids(tokenizer, prompt), length, temp, top_k, top_p,
                              seed, use_cache, stop_ids, banned_ids):
        piece = decoder.push(token)
        if piece:
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail


def generate(model, tokenizer, prompt, length, **sampling):
    """The prompt's continuation as one string (see stream_text for the options)."""
    return "".join(stream_text(model, tokenizer, prompt, length, **sampling))


def main(argv=None):
    parser = ArgumentParser(description="Generate text from a trained b_lm checkpoint.")
    parser.add_argument("--start", default="", help="prompt to continue; empty starts from a newline (default: '')")
    add_sampling_flags(parser)
    args = parser.parse_args(argv)
    check_sampling_args(args)
    model, tokenizer, _ = load_model(args.ckpt, choose_device(args.device))
    prompt_ids(tokenizer, args.start)  # reject unknown characters before printing anything
    sys.stdout.write(args.start)
    for piece in stream_text(model, tokenizer, args.start, args.length, args.temp, args.top_k, args.top_p,
                             args.seed, not args.no_cache):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


if __name__ == "__main__":
    run_main(main)

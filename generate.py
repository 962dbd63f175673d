"""Sample text from a trained checkpoint, or ask a chat model one question.

    python generate.py --ckpt checkpoint.pth --start "Sing, " --length 300 --temp 0.8
    python generate.py --ckpt chat.pth --chat "Who is the father of Achilles?"
"""
import sys

from chat import answer_room, build_prompt, require_chat, stream_answer, trim_notice
from checkpoint import load_model
from device import choose_device
from errors import ArgumentParser, UserError, run_main
from sampling import add_sampling_flags, check_sampling_args, stream_pieces
from tokenizer import ENDOFTEXT


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
    yield from stream_pieces(model, tokenizer, prompt_ids(tokenizer, prompt), length, temp, top_k, top_p,
                             seed, use_cache, stop_ids, banned_ids)


def generate(model, tokenizer, prompt, length, **sampling):
    """The prompt's continuation as one string (see stream_text for the options)."""
    return "".join(stream_text(model, tokenizer, prompt, length, **sampling))


def main(argv=None):
    parser = ArgumentParser(description="Generate text from a trained b_lm checkpoint, or answer one "
                                        "question with a chat model (--chat).")
    parser.add_argument("--start", default="", help="prompt to continue; empty starts from a newline (default: '')")
    parser.add_argument("--chat", metavar="QUESTION", default=None,
                        help="answer this question with a chat model (one made by sft.py) and exit; "
                             "--length caps the answer's tokens (default: off)")
    add_sampling_flags(parser)
    args = parser.parse_args(argv)
    check_sampling_args(args)
    if args.chat is not None and args.start:
        raise UserError("--chat and --start do not combine: a chat question is its own prompt")
    if args.chat is not None and not args.chat.strip():
        raise UserError("--chat needs a question")
    model, tokenizer, checkpoint = load_model(args.ckpt, choose_device(args.device))
    if args.chat is not None:
        require_chat(checkpoint, args.ckpt)
        block = model.config.block_size
        prompt = build_prompt(tokenizer, [], args.chat.strip(), block - answer_room(block, args.length))
        if prompt.trimmed_tokens:
            print(trim_notice(prompt, block), file=sys.stderr)
        pieces = stream_answer(model, tokenizer, prompt.ids, args.length, args.temp, args.top_k, args.top_p,
                               args.seed, not args.no_cache)
    else:
        prompt_ids(tokenizer, args.start)  # reject unknown characters before printing anything
        sys.stdout.write(args.start)
        pieces = stream_text(model, tokenizer, args.start, args.length, args.temp, args.top_k, args.top_p,
                             args.seed, not args.no_cache)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


if __name__ == "__main__":
    run_main(main)

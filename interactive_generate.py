"""An interactive prompt: load the checkpoint once, then continue whatever you type.

    python interactive_generate.py --ckpt checkpoint.pth --length 200

Each prompt starts a new text. An empty line continues the previous text
(or starts from a newline). quit, exit, q, :q, Ctrl-D or Ctrl-C end the session.
"""
import sys

from checkpoint import load_model
from device import choose_device
from errors import ArgumentParser, UserError, run_main
from generate import stream_text
from sampling import add_sampling_flags, check_sampling_args

QUIT_WORDS = {"quit", "exit", "q", ":q"}


def completion_loop(model, tokenizer, args, read=input, write=sys.stdout.write):
    """Read prompts until a quit word or end of input; stream each continuation."""
    text = ""  # the latest prompt and its continuation, for an empty line to extend
    while True:
        try:
            line = read("> ")
        except EOFError:
            write("\n")
            return
        if line.strip() in QUIT_WORDS:
            return
        prompt = line if line else text
        try:
            pieces = stream_text(model, tokenizer, prompt, args.length, args.temp, args.top_k, args.top_p,
                                 args.seed, not args.no_cache)
            out = []
            for piece in pieces:
                out.append(piece)
                write(piece)
                sys.stdout.flush()
        except UserError as e:  # e.g. characters the model never saw: say so, keep going
            write(f"error: {e}\n")
            continue
        write("\n")
        text = prompt + "".join(out)


def main(argv=None):
    parser = ArgumentParser(
        description="Interactive generation: type a prompt, get its continuation streamed back. "
                    "An empty line continues the previous text (the first one starts from a newline). "
                    "quit, exit, q, :q, Ctrl-D or Ctrl-C end the session.")
    add_sampling_flags(parser)
    parser.set_defaults(length=200)
    args = parser.parse_args(argv)
    check_sampling_args(args)
    model, tokenizer, _ = load_model(args.ckpt, choose_device(args.device))
    print(f"loaded {args.ckpt}; type a prompt, an empty line to continue, 'quit' to leave")
    try:
        completion_loop(model, tokenizer, args)
    except KeyboardInterrupt:
        print()
    print("bye")


if __name__ == "__main__":
    run_main(main)

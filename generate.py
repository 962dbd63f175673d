"""Generate text from a trained b_lm checkpoint, or answer one question with a chat model (--chat).

    python generate.py --ckpt checkpoint.pth --start "Sing, " --length 300 --temp 0.8
    python generate.py --ckpt chat.pth --chat "Who is the father of Achilles?"
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import sys

from chat import answer_settings, build_prompt, prompt_budget, require_chat, trim_notice
from checkpoint import load_model
from device import choose_device
from errors import ArgumentParser, UserError, run_main
from sampling import add_sampling_flags, sampling_from_args, stream_out, text_prompt


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="", help="prompt to continue; empty starts from a newline (default: '')")
    parser.add_argument("--chat", metavar="QUESTION", default=None, help="answer this question with a chat model "
                        "(one made by sft.py) and exit; --length caps the answer's tokens (default: off)")
    add_sampling_flags(parser)
    args = parser.parse_args(argv)
    settings = sampling_from_args(args)
    if args.chat is not None and args.start:
        raise UserError("--chat and --start do not combine: a chat question is its own prompt")
    if args.chat is not None and not args.chat.strip():
        raise UserError("--chat needs a question")
    model, tokenizer, checkpoint = load_model(args.ckpt, choose_device(args.device))
    if args.chat is not None:
        require_chat(checkpoint, args.ckpt)
        block = model.config.block_size
        prompt = build_prompt(tokenizer, [], args.chat.strip(), prompt_budget(block, args.length))
        if prompt.trimmed_tokens:
            print(trim_notice(prompt, block), file=sys.stderr)
        ids, settings = prompt.ids, answer_settings(tokenizer, settings)
    else:
        ids, settings = text_prompt(tokenizer, args.start, settings)  # unknown characters fail before any output
        sys.stdout.write(args.start)
    if stream_out(model, tokenizer, ids, settings, sys.stdout.write) is not None:
        sys.stdout.write("\n")


if __name__ == "__main__":
    run_main(main)

"""Interactive generation: load the checkpoint once, then continue text or chat. Completion mode: type a prompt, get
its continuation streamed back; an empty line continues the previous text. Chat mode (checkpoints from sft.py, or
--chat): a multi-turn conversation, with /reset and /help, oldest turns dropped first when it outgrows the model's
context. quit, exit, q, :q or Ctrl-D end the session; Ctrl-C stops it (status 130).

    python interactive_generate.py --ckpt checkpoint.pth --length 200   # completion
    python interactive_generate.py --ckpt chat.pth                      # chat (from sft.py)
"""
from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import sys
from functools import partial

from chat import answer_settings, build_prompt, prompt_budget, require_chat, trim_notice
from checkpoint import load_model
from device import choose_device
from errors import ArgumentParser, UserError, run_main
from sampling import add_sampling_flags, sampling_from_args, stream_out, text_prompt

QUIT_WORDS = {"quit", "exit", "q", ":q"}
write_out = partial(print, end="")  # print finds sys.stdout when called: run_main's, quiet once its reader goes away
CHAT_HELP = """commands:
  /reset   forget the conversation so far
  /help    show this help
  quit, exit, q, :q or Ctrl-D end the session (Ctrl-C stops it)
Any other line is a question. The model sees the conversation so far; when it
outgrows the model's context, the oldest turns are forgotten first."""


def completion_loop(model, tokenizer, settings, read=input, write=write_out):
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
            out = stream_out(model, tokenizer, *text_prompt(tokenizer, prompt, settings), write)
        except UserError as e:  # e.g. characters the model never saw: say so, keep going
            write(f"error: {e}\n")
            continue
        if out is None:
            return
        write("\n")
        text = prompt + out


def chat_loop(model, tokenizer, settings, read=input, write=write_out):
    """Read questions until a quit word or end of input; stream each answer, keeping the history."""
    history = []  # [(question, answer), ...], oldest first
    block = model.config.block_size
    budget = prompt_budget(block, settings.max_new_tokens)  # prompt tokens; the rest is for the answer
    settings = answer_settings(tokenizer, settings)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            write("\n")
            return
        if line in QUIT_WORDS:
            return
        if not line:
            continue
        if line.startswith("/"):
            if line == "/reset":
                history.clear()
            replies = {"/reset": "(conversation reset)", "/help": CHAT_HELP}
            write(replies.get(line, f"unknown command {line.split()[0]}: /help lists the commands") + "\n")
            continue
        try:
            prompt = build_prompt(tokenizer, history, line, budget)
        except UserError as e:  # e.g. characters the model never saw: say so, keep going
            write(f"error: {e}\n")
            continue
        # Forget what no longer fits for good, so an old turn does not flicker back when a shorter question leaves room.
        del history[:prompt.dropped_turns]
        if prompt.trimmed_tokens:
            write(trim_notice(prompt, block) + "\n")
        write("model> ")
        reply = stream_out(model, tokenizer, prompt.ids, settings, write)
        if reply is None:
            return
        write("\n")
        history.append((line, reply))


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sampling_flags(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true",
                      help="chat mode; the default for chat checkpoints, an error for others")
    mode.add_argument("--completion", action="store_true",
                      help="completion mode even for a chat checkpoint (chat models keep their prose)")
    parser.set_defaults(length=200)
    args = parser.parse_args(argv)
    settings = sampling_from_args(args)
    model, tokenizer, checkpoint = load_model(args.ckpt, choose_device(args.device))
    if args.chat:
        require_chat(checkpoint, args.ckpt)
    chat = checkpoint.get("chat", False) and not args.completion
    if chat:
        prompt_budget(model.config.block_size, settings.max_new_tokens)  # a context too short to chat: say so now
        print(f"loaded {args.ckpt}, a chat model; ask a question, /help for the commands, 'quit' to leave")
    else:
        print(f"loaded {args.ckpt}; type a prompt, an empty line to continue, 'quit' to leave")
    if hasattr(sys.stdin, "reconfigure"):
        # A line that is not UTF-8 would be a UnicodeDecodeError out of input(): keep its odd bytes as
        # characters instead (as Python does for argv), which the tokenizer names or encodes.
        sys.stdin.reconfigure(errors="surrogateescape")
    (chat_loop if chat else completion_loop)(model, tokenizer, settings)  # Ctrl-C: run_main's one line, 130
    print("bye")


if __name__ == "__main__":
    run_main(main)

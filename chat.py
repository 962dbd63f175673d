"""The chat format: conversations as token ids, for fine-tuning and for answering. A turn (question, answer) renders as
`<|user|>{question}<|end|><|assistant|>{answer}<|end|>` with the special tokens every tokenizer reserves (tokenizer.py).
The user's text is encoded with no special tokens allowed: typing "<|end|>" cannot forge a turn boundary. Fine-tuning
learns to answer from the answer tokens and their <|end|> (the answer mask), and at a small weight also to predict the
question's own tokens (question_mask): learning both how questions are worded and, from the shuffled ones, which
words go together in one fact's questions, the model answers held-out phrasings better (RESULTS.md, 2026-12-07).
Answering samples after `<|assistant|>` until <|end|>."""
from collections import namedtuple
from dataclasses import replace

from errors import UserError
from sampling import stream_text
from tokenizer import ASSISTANT, END_OF_TURN, ENDOFTEXT, USER, fit_typed_text

# dropped_turns: how many of the oldest history turns did not fit; trimmed_tokens: how many tokens were cut from the
# start of the question because it alone did not fit (0 when it fit whole).
Prompt = namedtuple("Prompt", "ids dropped_turns trimmed_tokens")


def encode_turn(tokenizer, question, answer):
    """One turn as (ids, mask): mask[i] is 1 where ids[i] is an answer token or its closing <|end|>. With the char
    tokenizer, ("Hi", "Yo") -> <|user|> H i <|end|> <|assistant|> Y o <|end|>, mask 0 0 0 0 0 1 1 1."""
    s, q, a = tokenizer.special_tokens, tokenizer.encode(question), tokenizer.encode(answer)
    return [s[USER], *q, s[END_OF_TURN], s[ASSISTANT], *a, s[END_OF_TURN]], [0] * (len(q) + 3) + [1] * (len(a) + 1)


def targets_from_mask(ids, mask):
    """(inputs, targets) of a rendered row: ids[t + 1] where it is masked in, -1 (the loss ignores it) elsewhere."""
    return ids[:-1], [i if m else -1 for i, m in zip(ids[1:], mask[1:])]


def question_mask(mask):
    """The question's mask of a rendered turn (encode_turn's or fit_turn's answer mask): 1 where the target is a
    character of the question or the <|end|> that closes it, what a reader of the question would predict."""
    answer_start = mask.index(1)  # <|user|> q <|end|> <|assistant|> a <|end|>
    return [int(1 <= i <= answer_start - 2) for i in range(len(mask))]


def fit_turn(ids, mask, max_len):
    """Shorten a rendered turn to max_len tokens by cutting the start of its question (its end says more of what is
    asked, and the answer must stay whole to be learned); None if no question token fits."""
    excess = len(ids) - max_len
    if excess <= 0:
        return ids, mask
    question_len = mask.index(1) - 3  # the answer starts after <|user|> q <|end|> <|assistant|>
    if excess >= question_len:
        return None
    return [ids[0], *ids[1 + excess:]], [mask[0], *mask[1 + excess:]]


def answer_room(block_size, max_new_tokens):
    """Context tokens kept free for the answer: max_new_tokens, but at most a quarter of the context, so a long --length
    cannot crowd out the question (a longer answer goes on, its window sliding)."""
    return max(1, min(max_new_tokens, block_size // 4))


# The shortest prompt: <|user|>, one token of the question, <|end|>, <|assistant|>.
MIN_PROMPT_TOKENS = 4


def prompt_budget(block_size, max_new_tokens):
    """Prompt tokens a context of block_size leaves once the answer has its room; a UserError if too few to chat."""
    budget = block_size - answer_room(block_size, max_new_tokens)
    if budget < MIN_PROMPT_TOKENS:
        raise UserError(f"the model's context of {block_size} tokens is too short for a chat prompt: a question takes "
                        f"at least {MIN_PROMPT_TOKENS} tokens (<|user|>, one of its own, <|end|>, <|assistant|>) and "
                        f"its answer 1; use a model trained with --block-size {MIN_PROMPT_TOKENS + 1} or more")
    return budget


def build_prompt(tokenizer, history, question, max_tokens):
    """The ids to answer from: as much of history [(question, answer), ...] as fits in max_tokens, the oldest turns
    dropped first, then the question; typed text, the history's too, is fitted to the vocabulary (fit_typed_text). A
    question too long alone keeps its end (see fit_turn), and the Prompt says how many tokens were cut."""
    s, q = tokenizer.special_tokens, tokenizer.encode(fit_typed_text(tokenizer, question))
    if max_tokens < MIN_PROMPT_TOKENS:
        raise UserError(f"a chat prompt needs at least {MIN_PROMPT_TOKENS} tokens (<|user|>, one of the question, "
                        f"<|end|>, <|assistant|>), and the model's context leaves {max_tokens}: too short to chat")
    trimmed = max(0, len(q) + 3 - max_tokens)
    tail = [s[USER], *q[trimmed:], s[END_OF_TURN], s[ASSISTANT]]
    kept, room = [], max_tokens - len(tail)  # kept: the rendered turns that fit, newest first
    for old_question, old_answer in reversed(history):
        ids, _ = encode_turn(tokenizer, fit_typed_text(tokenizer, old_question), fit_typed_text(tokenizer, old_answer))
        if len(ids) > room:
            break
        kept.append(ids)
        room -= len(ids)
    return Prompt([i for turn in reversed(kept) for i in turn] + tail, len(history) - len(kept), trimmed)


def answer_settings(tokenizer, settings):
    """settings for an answer: it ends at <|end|>, the one special token it may produce, and never opens a turn."""
    s = tokenizer.special_tokens
    return replace(settings, stop_ids=(s[END_OF_TURN],), banned_ids=(s[USER], s[ASSISTANT], s[ENDOFTEXT]))


def answer(model, tokenizer, question, settings, history=()):
    prompt = build_prompt(tokenizer, history, question, prompt_budget(model.config.block_size, settings.max_new_tokens))
    return "".join(stream_text(model, tokenizer, prompt.ids, answer_settings(tokenizer, settings)))


def trim_notice(prompt, block_size):
    """What the interface tells the user when their question did not fit the context, or ''."""
    return (f"(your question is too long for the model's context of {block_size} tokens: its first "
            f"{prompt.trimmed_tokens} tokens were left out)" if prompt.trimmed_tokens else "")


def require_chat(checkpoint, path):
    if not checkpoint.get("chat", False):
        raise UserError(f"{path} is not a chat model: fine-tune it first with "
                        f"'python sft.py --init-from {path}', or leave out --chat")

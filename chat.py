"""The chat format: conversations as token ids, for fine-tuning and for answering.

A turn (question, answer) renders as `<|user|>{question}<|end|><|assistant|>{answer}<|end|>` with the special tokens
every tokenizer reserves (tokenizer.py). The user's text is encoded with no special tokens allowed: typing "<|end|>"
cannot forge a turn boundary. Fine-tuning learns from the answer tokens and their <|end|> only: the model is to learn
to answer, not to predict the user's questions. Answering samples after `<|assistant|>` until <|end|>.
"""
from collections import namedtuple
from dataclasses import replace

from errors import UserError
from sampling import stream_text
from tokenizer import ASSISTANT, END_OF_TURN, ENDOFTEXT, USER, fit_typed_text

# dropped_turns: how many of the oldest history turns did not fit; trimmed_tokens: how many tokens were cut from the
# start of the question because it alone did not fit (0 when it fit whole).
Prompt = namedtuple("Prompt", "ids dropped_turns trimmed_tokens")


def turn_token_ids(tokenizer):
    """(user, assistant, end) token ids: the special tokens that mark a turn."""
    s = tokenizer.special_tokens
    return s[USER], s[ASSISTANT], s[END_OF_TURN]


def encode_turn(tokenizer, question, answer):
    """One turn as (ids, mask): mask[i] is 1 where ids[i] is an answer token or its closing <|end|>.

    With the char tokenizer, ("Hi", "Yo") -> <|user|> H i <|end|> <|assistant|> Y o <|end|>, mask 0 0 0 0 0 1 1 1."""
    user, assistant, end = turn_token_ids(tokenizer)
    q, a = tokenizer.encode(question), tokenizer.encode(answer)
    ids = [user, *q, end, assistant, *a, end]
    mask = [0] * (len(q) + 3) + [1] * (len(a) + 1)
    return ids, mask


def targets_from_mask(ids, mask):
    """(inputs, targets) of a rendered row: ids[t + 1] where it is masked in, -1 (the loss ignores it) elsewhere."""
    inputs = ids[:-1]
    targets = [i if m else -1 for i, m in zip(ids[1:], mask[1:])]
    return inputs, targets


def fit_turn(ids, mask, max_len):
    """Shorten one rendered turn to at most max_len tokens by cutting the start of its question; None when even a
    one-token question leaves no room for the answer.

    The end of a question ("... father of Hector?") carries more of what is asked than its start, and the answer
    must stay whole to be learned."""
    excess = len(ids) - max_len
    if excess <= 0:
        return ids, mask
    question_len = mask.index(1) - 3  # the answer starts after <|user|> q <|end|> <|assistant|>
    if excess >= question_len:
        return None
    return [ids[0], *ids[1 + excess:]], [mask[0], *mask[1 + excess:]]


def answer_room(block_size, max_new_tokens):
    """Context tokens kept free for the answer: max_new_tokens, but at most a quarter of the context.

    The cap stops a long --length from crowding out the question. An answer that outgrows its room still goes on
    (generation slides its window); it just loses sight of the start of the conversation."""
    return max(1, min(max_new_tokens, block_size // 4))


# The shortest prompt: <|user|>, one token of the question, <|end|>, <|assistant|>.
MIN_PROMPT_TOKENS = 4


def prompt_budget(block_size, max_new_tokens):
    """Prompt tokens a context of block_size leaves once the answer has its room; a UserError if too few to chat."""
    budget = block_size - answer_room(block_size, max_new_tokens)
    if budget < MIN_PROMPT_TOKENS:
        raise UserError(f"the model's context of {block_size} tokens is too short for a chat prompt: a question "
                        f"takes at least {MIN_PROMPT_TOKENS} tokens (<|user|>, one of its own, <|end|>, "
                        f"<|assistant|>) and its answer 1; use a model trained with --block-size "
                        f"{MIN_PROMPT_TOKENS + 1} or more")
    return budget


def build_prompt(tokenizer, history, question, max_tokens):
    """The ids to generate an answer from: as much of history [(question, answer), ...] as fits, then the question.

    The newest turns matter most, so the oldest are dropped first until the prompt fits in max_tokens. If the
    question alone does not fit, its end is kept (see fit_turn) and the Prompt says how many tokens were cut."""
    user, assistant, end = turn_token_ids(tokenizer)
    q = tokenizer.encode(fit_typed_text(tokenizer, question))
    if max_tokens < MIN_PROMPT_TOKENS:
        raise UserError(f"a chat prompt needs at least {MIN_PROMPT_TOKENS} tokens (<|user|>, one of the question, "
                        f"<|end|>, <|assistant|>), and the model's context leaves {max_tokens}: it is too short "
                        f"to chat")
    trimmed = max(0, len(q) + 3 - max_tokens)
    tail = [user, *q[trimmed:], end, assistant]
    kept = []  # rendered turns, newest first
    room = max_tokens - len(tail)
    for old_question, old_answer in reversed(history):
        ids, _ = encode_turn(tokenizer, old_question, old_answer)
        if len(ids) > room:
            break
        kept.append(ids)
        room -= len(ids)
    ids = [i for turn in reversed(kept) for i in turn] + tail
    return Prompt(ids, len(history) - len(kept), trimmed)


def answer_settings(tokenizer, settings):
    """settings for an answer: it ends at <|end|>, the one special token it may produce, and never opens a turn."""
    s = tokenizer.special_tokens
    return replace(settings, stop_ids=(s[END_OF_TURN],), banned_ids=(s[USER], s[ASSISTANT], s[ENDOFTEXT]))


def answer(model, tokenizer, question, settings, history=()):
    """The model's answer to question after history, as one string."""
    budget = prompt_budget(model.config.block_size, settings.max_new_tokens)
    prompt = build_prompt(tokenizer, history, question, budget)
    return "".join(stream_text(model, tokenizer, prompt.ids, answer_settings(tokenizer, settings)))


def trim_notice(prompt, block_size):
    """What the interface tells the user when their question did not fit the context, or ''."""
    if not prompt.trimmed_tokens:
        return ""
    return (f"(your question is too long for the model's context of {block_size} tokens: "
            f"its first {prompt.trimmed_tokens} tokens were left out)")


def require_chat(checkpoint, path):
    if not checkpoint.get("chat", False):
        raise UserError(f"{path} is not a chat model: fine-tune it first with "
                        f"'python sft.py --init-from {path}', or leave out --chat")

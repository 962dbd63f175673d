"""What a training run learns from: its batches, the loss of a batch, and what an evaluation measures.

trainer.py runs one loop for every task. A task has
    draw_state(), restore_draws(state)  where the draws of batches stand, for the checkpoint and --resume
    train_batches(n)                    n micro-batches, each a list of CPU tensors
    loss(model, batch)                  the scalar loss of one micro-batch (on the device)
    evaluate(model, max_tokens, dtype)  {'val_loss': ..., ...} scores
"""
import torch
import torch.nn.functional as F

from chat import encode_turn, fit_turn, question_mask, targets_from_mask
from data import Passes
from errors import UserError
from tokenizer import ENDOFTEXT
from validation import evaluate_loss


class TextTask:
    """Next-token prediction on blocks of a corpus, in the order its Batches draw them, scored on its validation
    split."""

    def __init__(self, batches, batch_size, token_chars):
        self.batches, self.batch_size, self.token_chars = batches, batch_size, token_chars

    def train_batches(self, n):
        return self.batches.train_batches(self.batch_size, n)

    def draw_state(self):
        return self.batches.draw_state()

    def restore_draws(self, state):
        self.batches.restore_draws(state)

    def loss(self, model, batch):
        return model(*batch)[1]  # batch is (inputs, targets)

    def evaluate(self, model, max_tokens, dtype=None):
        return evaluate_loss(model, self.batches, self.batch_size, self.token_chars, max_tokens, dtype)


class ChatRows:
    """Question/answer pairs as chat turns, packed into rows of row_len = block_size + 1 tokens padded with
    <|endoftext|> (masked out). A turn longer than a row loses the start of its question (chat.fit_turn); pairs whose
    answer alone does not fit (`too_long`) or with characters a char tokenizer lacks (`unencodable`) are skipped and
    counted. A shuffle_words share of drawn training turns get their question's words freshly shuffled: a fact's
    phrasings share content words ("Name Achilles’ father." / "Who is the father of Achilles?") far more than word
    order, so a model made to answer from the words alone answers new phrasings better."""

    def __init__(self, tokenizer, records, row_len, generator, shuffle_words=0.0, data_order="epochs"):
        self.tokenizer, self.row_len, self.generator, self.shuffle_words = tokenizer, row_len, generator, shuffle_words
        self.data_order = data_order  # as data.Batches: every turn once per pass, or each at random
        self.passes = Passes(lambda: torch.randperm(len(self.turns), generator=self.generator))
        self.pad = tokenizer.special_tokens[ENDOFTEXT]
        self.turns, self.texts, self.too_long, self.unencodable = [], [], 0, 0
        for r in records:
            try:
                turn = fit_turn(*encode_turn(tokenizer, r["question"], r["answer"]), row_len)
            except UserError:
                self.unencodable += 1
                continue
            if turn is None:
                self.too_long += 1
            else:
                self.turns.append(turn)
                self.texts.append((r["question"], r["answer"]))
        self.n_answer_tokens = sum(sum(mask) for _, mask in self.turns)

    def skipped_note(self):
        """' (N skipped: ...)' for the start-up line, or ''."""
        reasons = [f"{self.too_long} with answers too long for the context"] if self.too_long else []
        reasons += [f"{self.unencodable} with characters the vocabulary lacks"] if self.unencodable else []
        return f" ({self.too_long + self.unencodable} skipped: {', '.join(reasons)})" if reasons else ""

    def _tensors(self, rows):
        """(inputs, targets) of rows of (ids, mask), the targets -1 where the mask is 0 and in the padding."""
        x, y = zip(*(targets_from_mask(ids + [self.pad] * (self.row_len - len(ids)),
                                       mask + [0] * (self.row_len - len(mask))) for ids, mask in rows))
        return torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long)  # (B, row_len - 1) each

    def next_turn(self):
        """The index of the next train turn: the next of this pass's random order, or (data_order 'random') any."""
        if self.data_order == "random":
            return int(torch.randint(len(self.turns), (1,), generator=self.generator))
        return self.passes.take(1)[0]

    def put_back(self, k):
        """A drawn turn that did not fit its row: in a pass it opens the next row; a random draw is dropped."""
        if self.data_order == "epochs":
            self.passes.put_back(k)

    def turn(self, k):
        """Train turn k as (ids, mask), its question's words shuffled in a shuffle_words share of the calls."""
        if self.shuffle_words and float(torch.rand((), generator=self.generator)) < self.shuffle_words:
            question, answer = self.texts[k]
            words = question.split()
            question = " ".join(words[i] for i in torch.randperm(len(words), generator=self.generator).tolist())
            try:
                shuffled = fit_turn(*encode_turn(self.tokenizer, question, answer), self.row_len)
            except UserError:  # a char vocabulary without a space
                shuffled = None
            # A reordered question can also take more tokens (BPE) and no longer fit: keep the original.
            return shuffled or self.turns[k]
        return self.turns[k]

    def train_batch(self, batch_size):
        """Rows of train turns, each row a short conversation of unrelated questions, as (inputs, answer targets,
        question targets): the targets of the answers' tokens, and of the questions' own tokens."""
        rows = []
        for _ in range(batch_size):
            ids, answers, questions = [], [], []
            while True:
                k = self.next_turn()
                turn_ids, turn_mask = self.turn(k)
                if ids and len(ids) + len(turn_ids) > self.row_len:
                    self.put_back(k)  # the row is as full as this draw allows
                    break
                ids, answers, questions = ids + turn_ids, answers + turn_mask, questions + question_mask(turn_mask)
            rows.append((ids, answers, questions))
        x, y = self._tensors([(ids, answers) for ids, answers, _ in rows])
        return x, y, self._tensors([(ids, questions) for ids, _, questions in rows])[1]

    def val_batches(self, batch_size, max_tokens=None):
        """Every turn once, in order, packed greedily into rows: what validation.evaluate_loss reads."""
        rows, ids, mask = [], [], []
        for turn_ids, turn_mask in self.turns:
            if len(ids) + len(turn_ids) > self.row_len:
                rows.append((ids, mask))
                ids, mask = [], []
            ids, mask = ids + turn_ids, mask + turn_mask
        if ids:
            rows.append((ids, mask))
        for i in range(0, len(rows), batch_size):
            yield self._tensors(rows[i: i + batch_size])


def sft_loss(logits, y, asked, n_chat, text_weight, question_weight):
    """(1 - text_weight) * chat loss of the first n_chat rows + text_weight * loss of the others: weighting the two
    means keeps a text row's 128 targets from drowning a chat row's few answer tokens. The chat loss is the mean loss
    of the answer targets y plus question_weight times that of the question targets `asked`."""
    V = logits.size(-1)
    chat_logits = logits[:n_chat].reshape(-1, V)
    chat_loss = F.cross_entropy(chat_logits, y[:n_chat].reshape(-1), ignore_index=-1)
    if question_weight:
        chat_loss = chat_loss + question_weight * F.cross_entropy(chat_logits, asked[:n_chat].reshape(-1),
                                                                  ignore_index=-1)
    if n_chat == len(y):
        return chat_loss
    text_loss = F.cross_entropy(logits[n_chat:].reshape(-1, V), y[n_chat:].reshape(-1))
    return (1 - text_weight) * chat_loss + text_weight * text_loss


class ChatTask(TextTask):
    """Chat answers, with a share of corpus rows so the model keeps its prose: a micro-batch is n_chat chat rows then
    n_text corpus blocks, all drawn by the corpus's generator; the checkpoint holds it and both orders. The questions'
    own tokens count in the loss at question_weight (sft_loss)."""

    def __init__(self, chat_rows, batches, n_chat, n_text, token_chars, question_weight):
        super().__init__(batches, n_chat + n_text, token_chars)
        self.chat_rows, self.n_chat, self.n_text, self.question_weight = chat_rows, n_chat, n_text, question_weight

    def train_batches(self, n):
        micro_batches = []
        for _ in range(n):
            x, y, asked = self.chat_rows.train_batch(self.n_chat)
            if self.n_text:
                tx, ty = self.batches.train_batches(self.n_text, 1)[0]
                x, y, asked = torch.cat([x, tx]), torch.cat([y, ty]), torch.cat([asked, torch.full_like(ty, -1)])
            micro_batches.append((x, y, asked))
        return micro_batches

    def draw_state(self):
        return {**self.batches.draw_state(), "turn_order": self.chat_rows.passes.left.clone()}

    def restore_draws(self, state):
        """As TextTask's, and the turns left in the pass (none in a checkpoint from before the passes)."""
        self.chat_rows.passes.restore(state.get("turn_order"), len(self.chat_rows.turns) - 1,
                                      "its questions left in the pass do not fit the train questions")
        self.batches.restore_draws(state)

    def loss(self, model, batch):
        x, y, asked = batch
        return sft_loss(model(x)[0], y, asked, self.n_chat, self.n_text / self.batch_size, self.question_weight)

    def evaluate(self, model, max_tokens, dtype=None):
        qa = evaluate_loss(model, self.chat_rows, self.batch_size, dtype=dtype)["val_loss"]
        return {"qa_loss": qa, **super().evaluate(model, max_tokens, dtype)}

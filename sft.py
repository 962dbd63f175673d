"""Instruction-tune a pretrained checkpoint into a chat model on question/answer pairs.

    python sft.py --init-from checkpoint.pth --qa qa.jsonl --ckpt chat.pth

Learns from the train split of --qa only (the test split is for evaluate.py).
Each batch is mostly chat rows: random train questions rendered in the chat
format (chat.py) and packed into the model's context, several turns a row, so
the model also sees answers that follow earlier turns, as in a conversation.
The loss counts only the answer tokens and their closing <|end|>. The other
--pretrain-mix of the rows are random blocks of the corpus the base model was
trained on, with their own loss weighted by the same share, so the model keeps
its prose while it learns to answer.

Every --eval-interval steps we print the loss on the answers of all train
questions and the corpus's validation loss (same split as train.py). The
result is a checkpoint in train.py's format with chat=True.

The defaults were measured from the default 4-layer, 128-wide char model (val
loss 1.277) with one thread on a busy 2-core CPU: 5500 steps took 646 s, and
`python evaluate.py --ckpt chat.pth` 7 s more; exact match on the 400 test
questions went from 0.0% (the base model, asked in the same format) to 44.5%,
the val loss from 1.277 to 1.385. Many small steps beat fewer large ones at
equal time (batch 32 x 2500 steps: 38.0%); a smaller --pretrain-mix or more
weight decay gained about a point of exact match for much worse prose.
"""
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chat import encode_turn, fit_turn, targets_from_mask
from checkpoint import FORMAT_VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint, training_data
from data import Batches, tokenize_to_memmap
from device import DEVICE_CHOICES, choose_device, flush_denormals
from errors import ArgumentParser, UserError, run_main
from make_qa import load_qa
from optimizers import OPTIMIZER_NAMES, build_optimizer, set_lr_multiplier
from tokenizer import ENDOFTEXT
from train import evaluate, lr_multiplier, mean
from transformer import config_dict


def parse_args(argv=None):
    p = ArgumentParser(description="Fine-tune a pretrained checkpoint into a chat model on the train split "
                                   "of a question/answer file, mixing in its pretraining text.")
    a = p.add_argument
    a("--init-from", default="checkpoint.pth", help="pretrained checkpoint to start from (default: %(default)s)")
    a("--qa", default="qa.jsonl", help="question/answer JSONL (make_qa.py's schema); only its train split is "
                                       "used (default: %(default)s)")
    a("--data", default=None, help="pretraining text to mix in and validate on (default: the file the "
                                   "--init-from checkpoint was trained on)")
    a("--ckpt", "--checkpoint", dest="ckpt", default="chat.pth", help="chat checkpoint to write (default: %(default)s)")
    a("--overwrite", action="store_true", help="replace --ckpt if it exists")
    a("--max-iters", type=int, default=5500, help="optimizer steps (default: %(default)s)")
    a("--time-limit", type=float, default=0,
      help="stop cleanly after this many seconds, then evaluate and save; 0 = none (default: %(default)s)")
    a("--batch-size", type=int, default=16, help="rows per step, chat and text together (default: %(default)s)")
    a("--pretrain-mix", type=float, default=0.25,
      help="share of each batch's rows that are corpus text, and that text's weight in the loss, "
           "in [0, 1) (default: %(default)s)")
    a("--optimizer", default="adamw", choices=OPTIMIZER_NAMES, help="(default: %(default)s)")
    a("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    a("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of --lr "
                                                      "(default: %(default)s)")
    a("--warmup-iters", type=int, default=50, help="linear warm-up steps (default: %(default)s)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default: %(default)s)")
    a("--beta2", type=float, default=0.99, help="Adam beta2 (default: %(default)s)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this; 0 disables (default: %(default)s)")
    a("--eval-interval", type=int, default=500, help="evaluate and save every N steps (default: %(default)s)")
    a("--eval-tokens", type=int, default=16384,
      help="corpus val tokens per periodic evaluation; the final one uses all (default: %(default)s)")
    a("--seed", type=int, default=1337, help="seeds everything (default: %(default)s)")
    a("--device", default="auto", choices=DEVICE_CHOICES, help="auto: cuda, mps, dml, then cpu (default: %(default)s)")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args):
    for name in ("batch_size", "eval_interval", "eval_tokens"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.max_iters < 0 or args.time_limit < 0 or args.warmup_iters < 0 or args.grad_clip < 0:
        raise UserError("--max-iters, --time-limit, --warmup-iters and --grad-clip must be >= 0")
    if args.lr <= 0:
        raise UserError("--lr must be > 0")
    if not 0 <= args.pretrain_mix < 1:
        raise UserError(f"--pretrain-mix must be in [0, 1), got {args.pretrain_mix}")
    if round(args.batch_size * args.pretrain_mix) >= args.batch_size:
        raise UserError(f"--batch-size {args.batch_size} with --pretrain-mix {args.pretrain_mix} leaves no "
                        f"chat rows: lower the mix or raise the batch size")


class ChatRows:
    """Question/answer pairs as chat turns, packed into rows of the model's context.

    row_len is block_size + 1: a row gives block_size inputs and their next
    tokens. A turn longer than a row loses the start of its question (chat.fit_turn).
    Pairs the model cannot learn are skipped and counted: `too_long` whose
    answer alone does not fit a row, `unencodable` with characters a char
    tokenizer lacks. Rows are padded with <|endoftext|>, whose targets are masked out.
    """

    def __init__(self, tokenizer, records, row_len, generator):
        self.row_len = row_len
        self.generator = generator
        self.pad = tokenizer.special_tokens[ENDOFTEXT]
        self.turns, self.too_long, self.unencodable = [], 0, 0
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
        self.n_answer_tokens = sum(sum(mask) for _, mask in self.turns)

    def skipped_note(self):
        """' (N skipped: ...)' for the start-up line, or ''."""
        reasons = [f"{self.too_long} with answers too long for the context"] if self.too_long else []
        reasons += [f"{self.unencodable} with characters the vocabulary lacks"] if self.unencodable else []
        return f" ({self.too_long + self.unencodable} skipped: {', '.join(reasons)})" if reasons else ""

    def _tensors(self, rows):
        pairs = [targets_from_mask(ids + [self.pad] * (self.row_len - len(ids)),
                                   mask + [0] * (self.row_len - len(mask))) for ids, mask in rows]
        x = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        y = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        return x, y  # (B, row_len - 1) each

    def _pack(self, turns):
        """Greedily pack turns, in order, into rows: a turn that does not fit starts the next row."""
        rows, ids, mask = [], [], []
        for turn_ids, turn_mask in turns:
            if len(ids) + len(turn_ids) > self.row_len:
                rows.append((ids, mask))
                ids, mask = [], []
            ids, mask = ids + turn_ids, mask + turn_mask
        if ids:
            rows.append((ids, mask))
        return rows

    def train_batch(self, batch_size):
        """Rows of random turns: each row a short conversation of unrelated questions."""
        rows = []
        for _ in range(batch_size):
            ids, mask = [], []
            while True:
                turn_ids, turn_mask = self.turns[int(torch.randint(len(self.turns), (1,), generator=self.generator))]
                if ids and len(ids) + len(turn_ids) > self.row_len:
                    break  # the row is as full as this draw allows; the draw is dropped
                ids, mask = ids + turn_ids, mask + turn_mask
            rows.append((ids, mask))
        return self._tensors(rows)

    def val_batches(self, batch_size, max_tokens=None):
        """Every turn once, in order, packed into rows: the interface train.evaluate reads."""
        rows = self._pack(self.turns)
        for i in range(0, len(rows), batch_size):
            yield self._tensors(rows[i: i + batch_size])


def sft_loss(logits, y, n_chat, text_weight):
    """(1 - text_weight) * answer loss of the first n_chat rows + text_weight * loss of the others.

    Weighting the two means, rather than averaging all targets together, keeps
    the text's 128 targets a row from drowning the few answer tokens of a chat row.
    """
    V = logits.size(-1)
    chat_loss = F.cross_entropy(logits[:n_chat].reshape(-1, V), y[:n_chat].reshape(-1), ignore_index=-1)
    if n_chat == len(y):
        return chat_loss
    text_loss = F.cross_entropy(logits[n_chat:].reshape(-1, V), y[n_chat:].reshape(-1))
    return (1 - text_weight) * chat_loss + text_weight * text_loss


def fine_tune(args):
    if os.path.exists(args.ckpt) and not args.overwrite:
        raise UserError(f"{args.ckpt} already exists: pass --overwrite to replace it, or --ckpt to write "
                        f"another file")
    device = choose_device(args.device)
    flush_denormals()
    base = load_checkpoint(args.init_from)
    model, tokenizer = model_from_checkpoint(base, device)
    records = load_qa(args.qa, "train")
    if not records:
        raise UserError(f"{args.qa} has no train questions to fine-tune on")
    args.data = training_data(base, args.data)
    base_args = base.get("train_args") or {}
    tokens, n_chars = tokenize_to_memmap(args.data, tokenizer)
    if len(tokens) == 0:
        raise UserError(f"data file {args.data} is empty")
    block = model.config.block_size
    batches = Batches(tokens, block, base_args.get("val_fraction", 0.1), args.seed)
    tokens_per_char = len(tokens) / n_chars
    # One generator draws both the text blocks and the chat turns, so the
    # checkpoint's rng['batches'] holds all of the data order.
    chat_rows = ChatRows(tokenizer, records, block + 1, batches.generator)
    if not chat_rows.turns:
        raise UserError(f"no train question of {args.qa} can be learned: none both fits the model's context "
                        f"of {block} tokens and uses only characters its vocabulary has")
    torch.manual_seed(args.seed)
    optimizer = build_optimizer(model, args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                                betas=(0.9, args.beta2))
    n_text = round(args.batch_size * args.pretrain_mix)
    n_chat = args.batch_size - n_text
    text_weight = n_text / args.batch_size
    print(f"fine-tuning {args.init_from} ({tokenizer.kind} tokenizer, context {block}) on "
          f"{len(chat_rows.turns)} train questions of {args.qa}"
          + chat_rows.skipped_note()
          + f", {n_chat} chat + {n_text} text rows per step from {args.data}, device {device}")

    step, history, best_val = 0, [], None
    multiplier = 0.0

    def snapshot():
        train_args = {**base_args, **vars(args)}  # the base's model flags, this run's training flags
        return {"format_version": FORMAT_VERSION, "model_type": base["model_type"], "model_config": config_dict(model),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "tokenizer": tokenizer.to_dict(), "train_args": train_args, "step": step,
                "best_val_loss": best_val, "elapsed_s": time.time() - start,
                "rng": {"torch": torch.get_rng_state(), "batches": batches.generator.get_state()},
                "history": history, "chat": True}

    def record(train_loss, max_tokens):
        nonlocal best_val
        qa_loss = evaluate(model, chat_rows, args.batch_size, device)
        val = evaluate(model, batches, args.batch_size, device, max_tokens)
        best_val = val if best_val is None or val < best_val else best_val
        bpc = val / math.log(2) * tokens_per_char
        history.append({"step": step, "elapsed_s": round(time.time() - start, 2),
                        "train_loss": round(train_loss, 4), "qa_loss": round(qa_loss, 4),
                        "val_loss": round(val, 4), "val_ppl": round(math.exp(val), 3), "val_bpc": round(bpc, 4),
                        "lr": args.lr * multiplier})
        train_part = f"train loss {train_loss:.4f}, " if math.isfinite(train_loss) else ""
        tqdm.write(f"step {step}: {train_part}answer loss on the train questions {qa_loss:.4f}, "
                   f"val loss {val:.4f}, val bits/char {bpc:.4f}")
        return qa_loss, val, bpc

    start = time.time()
    interval_losses = []
    progress = None
    try:
        record(float("nan"), args.eval_tokens)  # the starting point, to see what fine-tuning changes
        model.train()
        progress = tqdm(total=args.max_iters, desc="fine-tuning", dynamic_ncols=True, file=sys.stderr)
        while step < args.max_iters:
            if args.time_limit and time.time() - start >= args.time_limit:
                tqdm.write(f"time limit of {args.time_limit:g} s reached at step {step}")
                break
            multiplier = lr_multiplier(step, args.warmup_iters, args.max_iters, args.min_lr_ratio)
            set_lr_multiplier(optimizer, multiplier)
            x, y = chat_rows.train_batch(n_chat)
            if n_text:
                tx, ty = batches.train_batches(n_text, 1)[0]
                x, y = torch.cat([x, tx]), torch.cat([y, ty])
            logits, _ = model(x.to(device))
            loss = sft_loss(logits, y.to(device), n_chat, text_weight)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise UserError(f"the loss became {loss_value} at step {step}; stopped without saving. "
                                f"Try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            interval_losses.append(loss_value)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.3f}")
            if step % args.eval_interval == 0 and step < args.max_iters:
                record(mean(interval_losses), args.eval_tokens)
                interval_losses.clear()
                save_checkpoint(args.ckpt, snapshot())
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        if step == 0:
            print("\ninterrupted before the first step: nothing saved", file=sys.stderr)
        else:
            save_checkpoint(args.ckpt, snapshot())
            print(f"\ninterrupted at step {step}: saved {args.ckpt}", file=sys.stderr)
        sys.exit(130)
    progress.close()

    qa_loss, val, bpc = record(mean(interval_losses), None)
    save_checkpoint(args.ckpt, snapshot())
    elapsed = time.time() - start
    print(f"saved {args.ckpt}")
    print(f"final: step={step} qa_loss={qa_loss:.4f} val_loss={val:.4f} val_bpc={bpc:.4f} elapsed_s={elapsed:.1f}")
    return {"step": step, "qa_loss": qa_loss, "qa_loss_start": history[0]["qa_loss"], "val_loss": val,
            "val_bpc": bpc, "elapsed_s": elapsed}


def main(argv=None):
    return fine_tune(parse_args(argv))


if __name__ == "__main__":
    run_main(main)

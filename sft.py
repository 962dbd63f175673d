"""Instruction-tune a pretrained checkpoint into a chat model on question/answer pairs.

    python sft.py --init-from checkpoint.pth --qa qa.jsonl --ckpt chat.pth
    python sft.py --ckpt chat.pth --resume       # continue an interrupted run

Learns from the train split of --qa only (the test split is for evaluate.py).
Each batch is mostly chat rows: random train questions rendered in the chat
format (chat.py) and packed into the model's context, several turns a row, so
the model also sees answers that follow earlier turns, as in a conversation.
The loss counts only the answer tokens and their closing <|end|>. The other
--pretrain-mix of the rows are random blocks of the corpus the base model was
trained on, with their own loss weighted by the same share, so the model keeps
its prose while it learns to answer (tasks.ChatTask).

Every --eval-interval steps we print the loss on the answers of all train
questions and the corpus's validation loss (same split as train.py). The
loop is trainer.py's, shared with train.py: --resume, torchrun, --dtype,
--compile, the metrics CSV and loss curve all work here too. The result is a
checkpoint in train.py's format with chat=True.

Half the drawn questions (--shuffle-words) have their words put in a random
order each time, so the model learns to answer from the words a question
holds rather than from the order of one wording; new phrasings of a fact
share its words far more than their order (tasks.ChatRows).

The defaults were measured from the default 4-layer, 128-wide char model
(val loss 1.199) on a 2-core CPU: 3000 steps took 347 s and `python
evaluate.py --ckpt chat.pth` 11 s more; exact match on the 400 test
questions went from 0.0% (the base model, asked in the same format) to
52.0%, so that pretraining, tuning and evaluating took 12.1 minutes there.
One run's exact match moves by about 8 points between seeds, so the recipes
below are means over seeds (one thread each; how many in brackets).
Shuffling the words is what lifted exact match past 50%: after 2000 steps,
41.2% without it (2) and 49.1% with it (3; shuffling 80% or all of the
questions was no better); after 3000 steps, 38.5% without it (1) and 54.0%
with it (4). Dropping a quarter of the words instead, adding a
fill-in-the-blank turn made from each fact's evidence, or lower learning
rates for the lower layers did not help (37.2%, 42.0%, 32.2%; 1 each).
The learning rate is 1e-2 because this base, trained with large Muon steps,
moved too little at pretraining's 3e-3 (31.8% without shuffling; 6e-3:
39.5%). Larger steps disturb the prose more (val loss 1.199 -> 1.524 after
tuning). Many small steps beat fewer large ones at equal time (batch 32 x
2500 steps: 38.0% against 44.5% for 16 x 5500 from an AdamW-trained base);
a smaller --pretrain-mix or more weight decay gained about a point of exact
match for much worse prose.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, training_data
from data import corpus_batches
from errors import ArgumentParser, UserError, run_main
from files import check_output_path
from qa import load_qa
from tasks import ChatRows, ChatTask
from trainer import (Run, add_training_flags, check_input_files, check_training_args, claimed_outputs, given_flags,
                     resumed_run, train, training_processes)

# What a resumed run takes from the checkpoint and may not change: its data, and the optimizer
# whose saved state fits only itself.
FIXED_ON_RESUME = ("init_from", "qa", "data", "pretrain_mix", "shuffle_words", "optimizer", "lr", "muon_lr",
                 "weight_decay", "muon_weight_decay", "beta2")


def parse_args(argv=None):
    p = ArgumentParser(description="Fine-tune a pretrained checkpoint into a chat model on the train split "
                                   "of a question/answer file, mixing in its pretraining text.")
    a = p.add_argument
    a("--init-from", default="checkpoint.pth", help="pretrained checkpoint to start from (default: %(default)s)")
    a("--qa", default="qa.jsonl", help="question/answer JSONL (make_qa.py's schema); only its train split is "
                                       "used (default: %(default)s)")
    a("--data", default=None, help="pretraining text to mix in and validate on (default: the file the "
                                   "--init-from checkpoint was trained on)")
    a("--pretrain-mix", type=float, default=0.25,
      help="share of each batch's rows that are corpus text, and that text's weight in the loss, "
           "in [0, 1) (default: %(default)s)")
    a("--shuffle-words", type=float, default=0.5,
      help="share of drawn train questions whose words are put in a random order, so that the model answers "
           "from the words a question holds rather than from one wording, in [0, 1] (default: %(default)s)")
    add_training_flags(p, ckpt="chat.pth", max_iters=3000, batch_size=16, optimizer="adamw", lr=1e-2, warmup_iters=50,
                       eval_interval=500, eval_tokens=16384, final_eval_tokens=0)
    args = p.parse_args(argv)
    args.given = given_flags(p, argv, args)
    check_args(args)
    return args


def check_args(args):
    check_training_args(args)
    if not 0 <= args.pretrain_mix < 1:
        raise UserError(f"--pretrain-mix must be in [0, 1), got {args.pretrain_mix}")
    if not 0 <= args.shuffle_words <= 1:
        raise UserError(f"--shuffle-words must be in [0, 1], got {args.shuffle_words}")
    if round(args.batch_size * args.pretrain_mix) >= args.batch_size:
        raise UserError(f"--batch-size {args.batch_size} with --pretrain-mix {args.pretrain_mix} leaves no "
                        f"chat rows: lower the mix or raise the batch size")


def main(argv=None):
    args = parse_args(argv)
    check_input_files(args, ["--init-from", "--qa", "--data"])
    with claimed_outputs(args, inputs=[args.init_from, args.qa, args.data]):
        return fine_tune(args)


def fine_tune(args):
    resumed = resumed_run(args, FIXED_ON_RESUME)
    if resumed:
        check_args(args)
    base = resumed or load_checkpoint(args.init_from)
    records = load_qa(args.qa, "train")
    if not records:
        raise UserError(f"{args.qa} has no train questions to fine-tune on")
    args.data = training_data(base, args.data)
    for flag, path in (("--ckpt", args.ckpt), ("--metrics", args.metrics), ("--plot", args.plot)):
        if path:
            check_output_path(path, flag, [args.data])
    base_args = base.get("train_args") or {}
    with training_processes(args.device) as (procs, device):
        model, tokenizer = model_from_checkpoint(base, device, args.ckpt if resumed else args.init_from)
        block = model.config.block_size
        batches = corpus_batches(args.data, tokenizer, block, base_args.get("val_fraction", 0.1), args.seed)
        chat_rows = ChatRows(tokenizer, records, block + 1, batches.generator, args.shuffle_words)
        if not chat_rows.turns:
            raise UserError(f"no train question of {args.qa} can be learned: none both fits the model's context "
                            f"of {block} tokens and uses only characters its vocabulary has")
        torch.manual_seed(args.seed)
        n_text = round(args.batch_size * args.pretrain_mix)
        n_chat = args.batch_size - n_text
        description = (f"fine-tuning {args.init_from} ({tokenizer.kind} tokenizer, context {block}) on "
                       f"{len(chat_rows.turns)} train questions of {args.qa}" + chat_rows.skipped_note()
                       + f", {n_chat} chat + {n_text} text rows per micro-batch from {args.data}")
        task = ChatTask(chat_rows, batches, n_chat, n_text, tokenizer.token_chars())
        # the base's model flags, this run's training flags
        train_args = {**base_args, **vars(args)}
        return train(Run(args, model.train(), tokenizer, task, procs, device, description, train_args=train_args,
                         chat=True, resume_from=resumed, eval_at_start=True))


if __name__ == "__main__":
    run_main(main)

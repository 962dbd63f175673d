"""Instruction-tune a pretrained checkpoint into a chat model on question/answer pairs.

    python sft.py --init-from checkpoint.pth --qa qa.jsonl --ckpt chat.pth
    python sft.py --ckpt chat.pth --resume       # continue an interrupted run

Learns from the train split of --qa only (the test split is for evaluate.py). Each batch is mostly chat rows: the train
questions, once per pass in a random order (--data-order), in the chat format (chat.py) packed into the model's context,
several turns a row, so the model also sees answers that follow earlier turns. The loss counts the answer tokens and
their closing <|end|>, and at 0.3 of their weight (--question-loss) the question's own tokens, written and shuffled
alike: a model that learns both how its questions are worded and which words go together in one fact's questions answers
held-out phrasings of them better. The other --pretrain-mix of the rows are blocks of the base model's corpus, drawn as
train.py draws them, their loss weighted by the same share, so the model keeps its prose while it learns to answer
(tasks.ChatTask). Half the drawn questions (--shuffle-words) have their words put in a random order each time, so the
model learns to answer from the words a question holds, which new phrasings of a fact share far more than their order
(tasks.ChatRows). The chat model saved is the mean of the weights over the run's last third of steps (--average-last),
which answers new phrasings better than the last step's.

Every --eval-interval steps we print the loss on the answers of all train questions and the corpus's validation loss
(same split as train.py). The loop is trainer.py's; the result is a checkpoint in train.py's format with chat=True.
How the defaults were chosen is in RESULTS.md.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, training_data_path
from data import corpus_batches
from errors import UserError, run_main
from files import check_output_path
from flags import BELOW_ONE, FIXED, FRACTION, NON_NEGATIVE, same_setting, setting
from qa import load_qa
from tasks import ChatRows, ChatTask
from run_config import TrainConfig, claimed_outputs, parse_command_line, resumed_run, training_processes
from trainer import Run, train


@dataclass(frozen=True)
class SftConfig(TrainConfig):
    """An instruction-tuning run: the loop's settings (with defaults of its own), its base and its data."""
    ckpt: str = same_setting(TrainConfig, "ckpt", "chat.pth")
    max_iters: int = same_setting(TrainConfig, "max_iters", 3000)
    batch_size: int = same_setting(TrainConfig, "batch_size", 16)
    optimizer: str = same_setting(TrainConfig, "optimizer", "adamw")
    lr: float = same_setting(TrainConfig, "lr", 1e-2)
    muon_lr: float = same_setting(TrainConfig, "muon_lr", 0.02)
    min_lr_ratio: float = same_setting(TrainConfig, "min_lr_ratio", 0.1)
    warmup_iters: int = same_setting(TrainConfig, "warmup_iters", 50)
    muon_weight_decay: float = same_setting(TrainConfig, "muon_weight_decay", 0.0)
    average_last: float = same_setting(TrainConfig, "average_last", 1 / 3)
    eval_interval: int = same_setting(TrainConfig, "eval_interval", 500)
    eval_tokens: int = same_setting(TrainConfig, "eval_tokens", 16384)
    final_eval_tokens: int = same_setting(TrainConfig, "final_eval_tokens", 0)
    init_from: str = setting("checkpoint.pth", "pretrained checkpoint to start from", resume=FIXED)
    qa: str = setting("qa.jsonl", "question/answer JSONL (make_qa.py's schema); only its train split is used",
                      resume=FIXED)
    data: Optional[str] = setting(None, "pretraining text to mix in and validate on (default: the file the "
                                        "--init-from checkpoint was trained on)", resume=FIXED)
    pretrain_mix: float = setting(0.25, "share of each batch's rows that are corpus text, and that text's weight in "
                                        "the loss", BELOW_ONE, resume=FIXED)
    shuffle_words: float = setting(0.5, "share of drawn train questions whose words are put in a random order, so "
                                        "that the model answers from the words a question holds rather than from "
                                        "one wording", FRACTION, resume=FIXED)
    question_loss: float = setting(0.3, "weight in the loss of predicting each question's own tokens, beside its "
                                        "answer's (0: the answers only)", NON_NEGATIVE, resume=FIXED)

    def __post_init__(self):
        super().__post_init__()
        if round(self.batch_size * self.pretrain_mix) >= self.batch_size:
            raise UserError(f"--batch-size {self.batch_size} with --pretrain-mix {self.pretrain_mix} leaves no "
                            f"chat rows: lower the mix or raise the batch size")


def main(argv=None):
    settings, invocation = parse_command_line(SftConfig, "Fine-tune a pretrained checkpoint into a chat model on the "
                                                         "train split of a question/answer file, mixing in its "
                                                         "pretraining text.", argv)
    with claimed_outputs(settings, invocation, inputs=["init_from", "qa", "data"]):
        return fine_tune(settings, invocation)


def fine_tune(settings, invocation):
    settings, resumed = resumed_run(settings, invocation)
    base = resumed or load_checkpoint(settings.init_from)
    if not (records := load_qa(settings.qa, "train")):
        raise UserError(f"{settings.qa} has no train questions to fine-tune on")
    settings = replace(settings, data=training_data_path(base, settings.data))
    for flag, path in settings.outputs().items():
        check_output_path(path, flag, [settings.data])
    base_run = base["run_config"]
    with training_processes(settings.device) as (procs, device):
        model, tokenizer = model_from_checkpoint(base, device, settings.ckpt if resumed else settings.init_from)
        block = model.config.block_size
        batches = corpus_batches(settings.data, tokenizer, block, base_run.get("val_fraction", 0.1), settings.seed,
                                 settings.data_order)
        chat_rows = ChatRows(tokenizer, records, block + 1, batches.generator, settings.shuffle_words,
                             settings.data_order)
        if not chat_rows.turns:
            raise UserError(f"no train question of {settings.qa} can be learned: none both fits the model's context "
                            f"of {block} tokens and uses only characters its vocabulary has")
        torch.manual_seed(settings.seed)
        n_text = round(settings.batch_size * settings.pretrain_mix)
        n_chat = settings.batch_size - n_text
        description = (f"fine-tuning {settings.init_from} ({tokenizer.kind} tokenizer, context {block}) on "
                       f"{len(chat_rows.turns)} train questions of {settings.qa}" + chat_rows.skipped_note()
                       + f", {n_chat} chat + {n_text} text rows per micro-batch from {settings.data}")
        task = ChatTask(chat_rows, batches, n_chat, n_text, tokenizer.token_chars(), settings.question_loss)
        run_config = {**base_run, **asdict(settings)}  # the base's model settings, this run's training settings
        return train(Run(settings, model.train(), tokenizer, task, procs, device, description, run_config=run_config,
                         chat=True, resume_from=resumed, eval_at_start=True))


if __name__ == "__main__":
    run_main(main)

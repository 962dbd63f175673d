"""The validation loss, perplexity and exact bits per character that train, sft and evaluate report. Bits per
character put runs with different tokenizers on one scale: the total nats over the validation targets, in bits,
divided by the characters those targets decode to (tokenizer.token_chars), exact for BPE, whose tokens hold
different numbers of characters, and the plain loss / ln 2 for characters."""
import math

import torch
import torch.nn.functional as F

from device import autocast


@torch.no_grad()
def evaluate_loss(model, batches, batch_size, token_chars=None, max_tokens=None, dtype=None):
    """{'val_loss', 'val_ppl', 'val_bpc'} over batches.val_batches (all of them, or about max_tokens). Targets of -1
    (masked out, as in chat rows) count for nothing. token_chars is tokenizer.token_chars(); without it there is no
    'val_bpc'. The model is left in the mode it came in."""
    device = next(model.parameters()).device
    chars = torch.tensor(token_chars, device=device) if token_chars is not None else None
    was_training = model.training
    model.eval()
    nats, targets, characters = 0.0, 0, 0
    for x, y in batches.val_batches(batch_size, max_tokens):
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        nats += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum").item()
        kept = y[y != -1]
        targets += kept.numel()
        if chars is not None:
            characters += int(chars[kept].sum())
    model.train(was_training)
    loss = nats / targets if targets else math.nan
    scores = {"val_loss": loss, "val_ppl": math.exp(loss) if loss < 700 else math.inf}
    if chars is not None:
        scores["val_bpc"] = nats / math.log(2) / characters if characters else math.nan
    return scores

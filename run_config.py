"""The settings of a training run that train.py and sft.py share: the loop's, the optimizer's and the outputs'.

Each script extends TrainConfig with its own settings (its data, the
model's shape); the checkpoint stores the whole config, and --resume is the
saved config with the overrides flags.resumed allows.
"""
import os
from dataclasses import asdict, dataclass
from typing import Optional

from device import DTYPE_CHOICES
from flags import (BELOW_ONE, FIXED, FRACTION, LOCAL, NON_NEGATIVE, POSITIVE, at_least, check_rules, ckpt_setting,
                   device_setting, seed_setting, setting)
from optimizers import OPTIMIZER_NAMES


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = setting(32, "sequences per micro-batch", at_least(1))
    grad_accum: int = setting(1, "micro-batches per optimizer step, summed over all torchrun processes", at_least(1))
    max_iters: int = setting(1500, "optimizer steps in total", at_least(0))
    time_limit: float = setting(0.0, "stop cleanly after this many seconds of this run, then evaluate and save; "
                                     "0 = none", NON_NEGATIVE)
    optimizer: str = setting("muon", "muon: Muon for hidden matrices + AdamW for the rest; or adamw, adam, sgd, "
                                     "torch-adamw", choices=OPTIMIZER_NAMES, resume=FIXED)
    lr: float = setting(3e-3, "peak learning rate of AdamW, Adam or SGD (with muon: of the embeddings, norms and "
                              "head)", POSITIVE, resume=FIXED)
    muon_lr: float = setting(0.06, "peak learning rate of Muon's matrices", POSITIVE, resume=FIXED)
    min_lr_ratio: float = setting(0.0, "final learning rate as a fraction of the peak", FRACTION)
    warmup_iters: int = setting(100, "linear warm-up steps", at_least(0))
    lr_decay_iters: int = setting(0, "cosine decay ends at this step; 0 = --max-iters", at_least(0))
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", NON_NEGATIVE, resume=FIXED)
    muon_weight_decay: float = setting(0.1, "decoupled weight decay of Muon's matrices", NON_NEGATIVE, resume=FIXED)
    beta2: float = setting(0.99, "Adam beta2", BELOW_ONE, resume=FIXED)
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0 disables", NON_NEGATIVE)
    eval_interval: int = setting(250, "evaluate and save every N steps", at_least(1))
    eval_tokens: int = setting(32768, "val tokens per periodic evaluation", at_least(1))
    final_eval_tokens: int = setting(1_000_000, "val tokens for the final evaluation; 0 = the whole validation "
                                                "split", at_least(0))
    log_interval: int = setting(10, "log the mean train loss to the CSV every N steps", at_least(1))
    seed: int = seed_setting()
    device: str = device_setting()
    dtype: str = setting("auto", "autocast precision; auto: bfloat16 on CUDA GPUs that have it, else float16, "
                                 "float32 off CUDA", choices=DTYPE_CHOICES)
    compile: bool = setting(False, "torch.compile the model where that works")
    ckpt: str = ckpt_setting("checkpoint.pth", "checkpoint file")
    metrics: Optional[str] = setting(None, "CSV of the train loss and evaluations; '' skips it (default: --ckpt's "
                                           "name with .csv)", resume=LOCAL)
    plot: Optional[str] = setting(None, "loss-curve PNG written at the end; '' skips it (default: --ckpt's name "
                                        "with .png)", resume=LOCAL)

    def __post_init__(self):
        check_rules(self)

    @property
    def metrics_file(self):
        """The metrics CSV: --metrics, or named after the checkpoint, so one run's files never overwrite another's."""
        return os.path.splitext(self.ckpt)[0] + ".csv" if self.metrics is None else self.metrics

    @property
    def plot_file(self):
        return os.path.splitext(self.ckpt)[0] + ".png" if self.plot is None else self.plot

    def outputs(self):
        """{flag: path} of the files a run writes; '' skips the metrics CSV or the plot."""
        named = {"--ckpt": self.ckpt, "--metrics": self.metrics_file, "--plot": self.plot_file}
        return {flag: path for flag, path in named.items() if path or flag == "--ckpt"}

    def as_dict(self):
        return asdict(self)

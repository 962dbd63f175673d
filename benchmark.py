"""The benchmarks behind `python timing.py MODE`: step (the default), generate and hf, each a settings dataclass
(its flags and their checks) and a run. transformers, a dev requirement, is imported only by the modes that need it.
"""
import dataclasses
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from device import check_fits_in_memory, choose_device, device_name, lay_out_for_decoding
from errors import ArgumentParser, UserError
from flags import (POSITIVE, add_flags, at_least, check_rules, device_setting, flag_name, from_args, same_setting,
                   seed_setting, setting)
from optimizers import OPTIMIZER_NAMES, build_optimizer
from sampling import Sampling, generate_ids, gradients_off
from timing import (best_seconds, count_flop_params, mfu, model_flops_per_token, peak_flops, run_measured, timed,
                    tokens_per_second)
from tokenizer import ENDOFTEXT
from transformer import CHOICES, GPTConfig, Transformer, config_problem, count_parameters, estimate_parameters

CONVERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert.py")


# -------------------------------------------------------- what the modes share

@dataclass(frozen=True)
class Shape:
    """The model a benchmark builds (here with the step mode's defaults), its random tokens, and the seed."""
    n_layer: int = setting(4, "transformer blocks")
    n_embd: int = setting(128, "embedding width")
    n_head: int = setting(4, "attention heads, dividing --n-embd")
    block_size: int = setting(64, "context length in tokens")
    vocab_size: int = setting(68, "vocabulary size; random tokens are drawn from it")
    attention: str = setting("sdpa", "sdpa: F.scaled_dot_product_attention; explicit: matmul-softmax, for "
                                     "DirectML", choices=CHOICES["attention"])
    seed: int = seed_setting(1337, "seed for weights and tokens")

    def __post_init__(self):
        check_rules(self)
        config = dataclasses.asdict(self.model_config())
        if problem := config_problem("transformer", config, name=flag_name):  # the model's own check
            raise UserError(problem)
        check_fits_in_memory(estimate_parameters("transformer", config), "cpu")

    def model_config(self):
        """The GPTConfig of the settings that are its fields, its defaults for the rest."""
        return GPTConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in GPTConfig.__dataclass_fields__})


def generate_ours(model, prompt_ids, new_tokens, use_cache=True):
    settings = Sampling(max_new_tokens=new_tokens, temperature=0, use_cache=use_cache)
    return list(generate_ids(model, prompt_ids, settings))


def hf_gpt2(who, **config):
    """A random GPT2LMHeadModel of GPT2Config(**config), in eval mode; UserError naming `who` without transformers."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{who} compares against Hugging Face transformers, which is not installed: "
                        f"pip install -r requirements-dev.txt") from None
    transformers.logging.set_verbosity_error()  # its notes about generation defaults are noise here
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()


def generate_hf(model, prompt_ids, new_tokens):
    """Greedy ids from transformers' generate() with its KV cache; exactly new_tokens of them."""
    x = torch.tensor([prompt_ids], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, use_cache=True,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    ids = out[0, len(prompt_ids):].tolist()
    if len(ids) != new_tokens:  # a shorter run would flatter its tokens/s
        raise RuntimeError(f"transformers generated {len(ids)} tokens, not {new_tokens}")
    return ids


def matrix_weights(model):
    """How many weights a batch-1 decoding step reads: every Linear layer's (embeddings are one-row lookups)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def weight_read_seconds(n_weights, repeats, device="cpu"):
    """Fastest seconds to read n_weights float32 numbers once, as a matrix-vector product: a ceiling no decoder
    beats. At batch 1 a decoding step reads each weight once for 2 FLOPs, so memory bandwidth sets the pace. Both
    ways of storing the matrix are timed, rows of 1024 (dot products) and columns of 1024 (sums of scaled rows), and
    the faster kept: a CPU reads one of them faster (see device.lay_out_for_decoding)."""
    rows, seconds = math.ceil(n_weights / 1024), []
    for by_rows in (True, False):  # one matrix at a time: GPT-2 small's is 0.5 GB
        weights = torch.randn((rows, 1024) if by_rows else (1024, rows), device=device)
        vector = torch.randn(1024, device=device) if by_rows else torch.randn(1, 1024, device=device)
        product = (lambda: torch.mv(weights, vector)) if by_rows else (lambda: vector @ weights)
        timed(product, device)  # warm-up
        seconds.append(best_seconds(lambda: timed(product, device)[0], 20 * repeats)[0])
        weights = vector = None  # freed before the next is made
    return min(seconds)


def matrix_products_seconds(model, repeats, device="cpu"):
    """Fastest seconds of the model's matrix products alone: one vector through each weight matrix in turn, as stored,
    as a decoding step multiplies them. The floor of any decoder that makes a call per matrix: what a step spends
    beyond it is everything else (attention, norms, Python), and below the bandwidth ceiling by the start-up cost of
    reading each matrix on its own."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(1, m.in_features, device=device) for m in linears}

    def products():
        return [torch.nn.functional.linear(inputs[m.in_features], m.weight) for m in linears]
    timed(products, device)  # warm-up
    return best_seconds(lambda: timed(products, device)[0], 5 * repeats)[0]


# -------------------------------------------------- step: one training step

@dataclass(frozen=True)
class StepSettings(Shape):
    """Time training steps (forward, backward, optimizer) for each optimizer and report tokens/s, GFLOP/s and
    MFU, one row per optimizer."""
    batch_size: int = setting(12, "sequences per step", at_least(1))
    steps: int = setting(10, "timed steps per optimizer, after warm-up", at_least(1))
    warmup: int = setting(3, "untimed steps first, to pay one-off costs", at_least(0))
    optimizers: str = setting(",".join(OPTIMIZER_NAMES), "comma-separated names")
    lr: float = setting(1e-3, "AdamW/Adam/SGD learning rate; timing does not depend on it", POSITIVE)
    device: str = device_setting()

    def __post_init__(self):
        super().__post_init__()
        self.optimizer_names()

    def optimizer_names(self):
        """The names in --optimizers; UserError for none or an unknown one."""
        names = [n.strip() for n in self.optimizers.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPTIMIZER_NAMES]
        if unknown or not names:
            what = f"unknown {', '.join(unknown)}" if unknown else "no names given"
            raise UserError(f"--optimizers: {what}; choose from {','.join(OPTIMIZER_NAMES)}")
        return names


def time_training_steps(model, optimizer, x, y, steps, warmup=2):
    """{phase: [seconds, one a step]} for 'forward', 'backward', 'optimizer' (step + zero_grad) and 'total' of
    `steps` training steps on (x, y); model(x, y) returns (logits, loss). The `warmup` untimed steps first pay
    one-off costs (allocator growth, kernel selection, lazy init)."""
    times = {"forward": [], "backward": [], "optimizer": [], "total": []}
    model.train()
    for step in range(warmup + steps):
        loss, forward = timed(lambda: model(x, y)[1], x.device)
        _, backward = timed(loss.backward, x.device)
        _, opt = timed(lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)), x.device)
        if step >= warmup:
            for phase, seconds in zip(times, (forward, backward, opt, forward + backward + opt)):
                times[phase].append(seconds)
    return times


def run_step(s):
    """Print the step table of StepSettings s."""
    device = choose_device(s.device)
    g = torch.Generator().manual_seed(s.seed)
    x, y = (torch.randint(s.vocab_size, (s.batch_size, s.block_size), generator=g).to(device) for _ in range(2))
    tokens = s.batch_size * s.block_size
    peak = peak_flops(device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"measured peak {peak / 1e9:.1f} GFLOP/s (float32 matmul)")
    probe = Transformer(s.model_config())  # FLOPs per token do not depend on the optimizer
    fpt = model_flops_per_token(probe)
    print(f"{count_flop_params(probe) / 1e6:.2f}M params (excluding position embedding), "
          f"{fpt / 1e6:.1f} MFLOP/token, {tokens} tokens/step, median of {s.steps} steps after {s.warmup} warm-up")
    print(f"{'optimizer':<12} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>8} {'step ms':>8} "
          f"{'p90 ms':>8} {'tok/s':>9} {'GFLOP/s':>8} {'MFU':>6}")
    for name in s.optimizer_names():
        torch.manual_seed(s.seed)  # every row starts from the same weights
        model = Transformer(s.model_config()).to(device)
        optimizer = build_optimizer(model, name, lr=s.lr, weight_decay=0.1)
        t = time_training_steps(model, optimizer, x, y, s.steps, s.warmup)
        ms = {phase: 1000 * np.median(seconds) for phase, seconds in t.items()}
        tps = tokens_per_second(tokens, ms["total"] / 1000)
        print(f"{name:<12} {ms['forward']:8.2f} {ms['backward']:8.2f} {ms['optimizer']:8.2f} {ms['total']:8.2f} "
              f"{1000 * np.percentile(t['total'], 90):8.2f} {tps:9.0f} {tps * fpt / 1e9:8.2f} "
              f"{mfu(tps, fpt, peak):6.1%}")
    return 0


# --------------------------------------- generate: ours against transformers

@dataclass(frozen=True)
class GenerateSettings(Shape):
    """Time greedy generation at batch 1, float32, random weights: ours with the KV cache, ours without it, and
    Hugging Face transformers' GPT2LMHeadModel.generate (with its cache) for the same shape, on the same device.
    Reports new tokens per second and the time to the first token after a long prompt (the prefill plus one sampling
    step)."""
    n_layer: int = same_setting(Shape, "n_layer", 6)
    n_embd: int = same_setting(Shape, "n_embd", 256)
    n_head: int = same_setting(Shape, "n_head", 8)
    block_size: int = same_setting(Shape, "block_size", 256)
    new_tokens: int = setting(255, "tokens each run generates after a 1-token prompt; 1 + this must fit in "
                                   "--block-size", at_least(1))
    prompt_tokens: int = setting(200, "prompt length for the time-to-first-token column", at_least(1))
    repeats: int = setting(3, "time each run this many times and keep the fastest", at_least(1))
    threads: Optional[int] = setting(None, "torch CPU threads (default: PyTorch's own choice)", at_least(1))
    skip_transformers: bool = setting(False, "time only our model (no transformers needed)")
    positions: str = setting("learned", "position encoding of our model, as train.py's flag",
                             choices=CHOICES["positions"])
    norm: str = setting("layer", "normalisation of our model", choices=CHOICES["norm"])
    mlp: str = setting("gelu", "MLP of our model", choices=CHOICES["mlp"])
    qk_norm: bool = setting(False, "LayerNorm each head's queries and keys in our model")
    device: str = device_setting()

    def __post_init__(self):
        super().__post_init__()
        # Every run must fit in the context: GPT-2 cannot go past n_positions, and ours would start sliding its
        # window, which is no longer the same work.
        for flag, tokens, what in (("--new-tokens", self.new_tokens, "one prompt token plus the new ones"),
                                   ("--prompt-tokens", self.prompt_tokens, "the prompt plus its first new token")):
            if 1 + tokens > self.block_size:
                raise UserError(f"{flag} {tokens}: {what} must fit in --block-size {self.block_size}")


def generation_runs(s, device):
    """{row name: generate(prompt_ids, new_tokens)}, our model, and transformers' (None if skipped), on device."""
    hf = None
    if not s.skip_transformers:
        # No bos/eos: GPT-2's (50256) lie outside a small vocabulary, and with no eos it never stops early.
        torch.manual_seed(s.seed)
        hf = hf_gpt2("the generate benchmark (or pass --skip-transformers)", n_layer=s.n_layer, n_embd=s.n_embd,
                     n_head=s.n_head, n_positions=s.block_size, vocab_size=s.vocab_size, bos_token_id=None,
                     eos_token_id=None).to(device)
    torch.manual_seed(s.seed)
    ours = lay_out_for_decoding(Transformer(s.model_config()).eval().to(device))  # as generate.py loads it
    runs = {"ours, KV cache": lambda p, n: generate_ours(ours, p, n),
            "ours, no cache": lambda p, n: generate_ours(ours, p, n, use_cache=False)}
    gpt2 = dataclasses.replace(s.model_config(), positions="learned", norm="layer", mlp="gelu", qk_norm=False)
    if gpt2 != ours.config:  # our model of the same size with GPT-2's parts (GPTConfig's defaults), to compare
        torch.manual_seed(s.seed)
        gpt2_parts = lay_out_for_decoding(Transformer(gpt2).eval().to(device))
        runs["GPT-2 parts, cache"] = lambda p, n: generate_ours(gpt2_parts, p, n)
    if hf is not None:
        runs["transformers GPT-2"] = lambda p, n: generate_hf(hf, p, n)
    return runs, ours, hf


def run_generate(s):
    """Print the generation table of GenerateSettings s, and the ceiling memory bandwidth puts on it."""
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    device = choose_device(s.device)
    runs, ours, hf = generation_runs(s, device)
    threads = torch.get_num_threads()
    theirs = "" if hf is None else f", transformers {sys.modules['transformers'].__version__}"
    where = f"{threads} thread{'s' * (threads > 1)}" if device.type == "cpu" else device_name(device)
    print(f"{s.n_layer} layers, {s.n_embd} wide, {s.n_head} heads, block {s.block_size}, vocab {s.vocab_size}, "
          f"{s.positions}/{s.norm}/{s.mlp}{'/qk-norm' * s.qk_norm}; batch 1, float32 on {device.type}, "
          f"{where}, torch {torch.__version__}{theirs}")
    theirs = "" if hf is None else (f", GPT-2 {count_parameters(hf) / 1e6:.2f}M (it adds biases and ties its "
                                    f"embedding to the head)")
    print(f"ours {count_parameters(ours) / 1e6:.2f}M parameters{theirs}")
    print(f"greedy: {s.new_tokens} new tokens after a 1-token prompt; first token after a "
          f"prompt of {s.prompt_tokens}; best of {s.repeats} run{'s' * (s.repeats > 1)}")
    g = torch.Generator().manual_seed(s.seed)
    prompt = torch.randint(s.vocab_size, (1,), generator=g).tolist()
    long_prompt = torch.randint(s.vocab_size, (s.prompt_tokens,), generator=g).tolist()
    results = {}  # {name: (best seconds of the run, best seconds to the first token after the long prompt, ids)}
    with gradients_off(device):  # what generate_ids uses; transformers gets it too
        for name, generate in runs.items():
            generate(prompt, min(s.new_tokens, 4))  # warm-up: first calls pay for allocation
            seconds, ids = best_seconds(lambda: generate(prompt, s.new_tokens), s.repeats)
            results[name] = seconds, best_seconds(lambda: generate(long_prompt, 1), s.repeats)[0], ids
    base = results["transformers GPT-2"][0] if hf is not None else None
    print(f"{'':20} {'tok/s':>8} {'vs transformers':>16} {'first token ms':>15}")
    for name, (seconds, first, _) in results.items():
        ratio = f"{base / seconds:15.2f}x" if base is not None else f"{'-':>16}"
        print(f"{name:20} {tokens_per_second(s.new_tokens, seconds):8.1f} {ratio} {1000 * first:15.1f}")
    same = results["ours, KV cache"][2] == results["ours, no cache"][2]
    print(f"ours with and without the cache gave the same {s.new_tokens} tokens: {same}")
    n_weights = matrix_weights(ours)
    read = weight_read_seconds(n_weights, s.repeats, device)
    theirs = "" if base is None else f", {base / (read * s.new_tokens):.1f}x transformers"
    print(f"ceiling: each step reads all {n_weights / 1e6:.2f}M matrix weights ({4 * n_weights / 1e6:.1f} MB); "
          f"reading them once takes {1000 * read:.3f} ms here ({4 * n_weights / read / 1e9:.0f} GB/s), "
          f"so at most {1 / read:.0f} tokens/s{theirs}")
    print_products_floor(ours, read, s.repeats, device, base / s.new_tokens if base is not None else None)
    return 0


def print_products_floor(model, read, repeats, device, their_step=None):
    """Print what the model's matrix products alone take, one call each, against the bandwidth ceiling `read`."""
    products = matrix_products_seconds(model, repeats, device)
    theirs = "" if their_step is None else f", {their_step / products:.1f}x transformers"
    print(f"floor: the model's matrix products alone, a call each, take {1000 * products:.3f} ms "
          f"({read / products:.0%} of the ceiling's speed), so at most {1 / products:.0f} tokens/s{theirs}")


# ------------------------------------------- hf: a GPT-2-small through convert.py

GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


@dataclass(frozen=True)
class HFSettings:
    """Build a GPT-2-small-shaped model with transformers (random weights), convert it to b_lm and back (time
    and peak memory of each), and time batch-1 greedy generation: ours with the KV cache against transformers."""
    new_tokens: int = setting(200, "tokens to generate", at_least(1))
    prompt_tokens: int = setting(100, "prompt length", at_least(1))
    seed: int = seed_setting(1337, "seed for weights and prompt")

    def __post_init__(self):
        check_rules(self)
        if self.prompt_tokens + self.new_tokens > GPT2_SMALL["n_positions"]:
            raise UserError(f"--prompt-tokens {self.prompt_tokens} and --new-tokens {self.new_tokens} must fit "
                            f"in GPT-2's {GPT2_SMALL['n_positions']} positions together")


def gpt2_shaped_folder(folder, seed, shape):
    """A Hugging Face GPT-2 folder of this shape, random weights, and GPT-2's kind of vocabulary: the 256 bytes,
    merges of byte pairs, then <|endoftext|>."""
    from hf_tokenizer import byte_to_unicode
    vocab_size = shape["vocab_size"]
    torch.manual_seed(seed)
    model = hf_gpt2("timing.py hf", **shape, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    model.save_pretrained(folder)
    alphabet = byte_to_unicode()
    pairs = [(alphabet[a], alphabet[b]) for a in range(256) for b in range(256)][:vocab_size - 257]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        tokens = [*alphabet.values(), *(a + b for a, b in pairs), ENDOFTEXT]
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in pairs))
    return model


def run_hf(s):
    """Print the conversion's time and memory, then the generation table, of HFSettings s."""
    from checkpoint import load_model
    from hf_tokenizer import read_tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        folder, ckpt = os.path.join(tmp, "gpt2"), os.path.join(tmp, "gpt2.pth")  # save_pretrained makes the folder
        theirs = gpt2_shaped_folder(folder, s.seed, GPT2_SMALL)
        megabytes = os.path.getsize(os.path.join(folder, "model.safetensors")) / 1e6
        import_s, import_mb = run_measured(CONVERT, "from-hf", folder, ckpt)
        export_s, export_mb = run_measured(CONVERT, "to-hf", ckpt, os.path.join(tmp, "back"))
        c = GPT2_SMALL
        print(f"GPT-2-small shape ({c['n_layer']} layers, {c['n_embd']} wide, block {c['n_positions']}, vocab "
              f"{c['vocab_size']}), {megabytes:.0f} MB of weights")
        print(f"from-hf {import_s:.1f} s, peak RSS {import_mb:.0f} MB; to-hf {export_s:.1f} s, peak RSS "
              f"{export_mb:.0f} MB ({max(import_mb, export_mb) / megabytes:.2f}x the weights)")
        ours, _, _ = load_model(ckpt)
        _, to_ours, _ = read_tokenizer(folder)
    g = torch.Generator().manual_seed(s.seed)
    prompt = torch.randint(GPT2_SMALL["vocab_size"] - 1, (s.prompt_tokens,), generator=g).tolist()
    runs = {"ours, KV cache": lambda: generate_ours(ours, [to_ours[i] for i in prompt], s.new_tokens),
            "transformers GPT-2": lambda: generate_hf(theirs, prompt, s.new_tokens)}
    with torch.inference_mode():  # best of two: the first run pays for allocation
        results = {name: best_seconds(run, 2) for name, run in runs.items()}
    same = results["ours, KV cache"][1] == [to_ours[i] for i in results["transformers GPT-2"][1]]
    base = results["transformers GPT-2"][0]
    read = weight_read_seconds(matrix_weights(ours), 1)
    ceiling = 1 / read
    print(f"greedy, batch 1, {s.new_tokens} new tokens after {s.prompt_tokens}, "
          f"{torch.get_num_threads()} threads; the same tokens: {same}")
    for name, (seconds, _) in results.items():
        tps = tokens_per_second(s.new_tokens, seconds)
        print(f"{name:20} {tps:8.1f} tok/s {base / seconds:6.2f}x transformers {tps / ceiling:6.0%} of the "
              f"memory-bandwidth ceiling ({ceiling:.0f} tok/s)")
    print_products_floor(ours, read, 1, "cpu", base / s.new_tokens)
    return 0


# ------------------------------------------------------------------ the command

MODES = {"step": (StepSettings, run_step, "time training steps (the default mode)"),
         "generate": (GenerateSettings, run_generate, "time generation against transformers' GPT-2"),
         "hf": (HFSettings, run_hf, "convert a GPT-2-small-shaped model both ways and time its generation")}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # No mode named: the step table, so 'python timing.py --steps 5' keeps working.
    if not argv or argv[0] not in (*MODES, "-h", "--help"):
        argv = ["step", *argv]
    parser = ArgumentParser(description="Time the model: training steps per optimizer (step, the default when no "
                                        "mode is named), generation against Hugging Face transformers (generate), "
                                        "or a GPT-2-small through convert.py (hf). See 'python %(prog)s MODE "
                                        "--help' for each mode's flags.")
    modes = parser.add_subparsers(dest="mode", metavar="MODE")
    for name, (settings, run, help) in MODES.items():
        p = modes.add_parser(name, help=help, description=settings.__doc__)
        add_flags(p, settings)
        p.set_defaults(settings=settings, run=run)
    args = parser.parse_args(argv)
    return args.run(from_args(args.settings, args))  # the settings check themselves as they are made

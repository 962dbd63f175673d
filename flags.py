"""Settings, and the command-line flags made from them: each defined once.

A setting is a dataclass field whose metadata holds its help, the rule its value must meet (a range, or choices) and
what --resume does with it: KEPT settings come from the checkpoint unless a flag overrides them, FIXED ones must stay
as saved (the saved weights and optimizer state fit only those), LOCAL ones belong to this invocation (files, device).
"""
import argparse
import dataclasses
import math
from collections import namedtuple

from device import DEVICE_CHOICES
from errors import UserError, shown

KEPT, FIXED, LOCAL = "kept", "fixed", "local"


# What a value must be, as a message says it ('>= 1'), and the test of it.
Rule = namedtuple("Rule", "text holds")


def at_least(low):
    return Rule(f">= {low}", lambda v: v >= low)


POSITIVE = Rule("a number > 0", lambda v: 0 < v < math.inf)
NON_NEGATIVE = Rule("a number >= 0", lambda v: 0 <= v < math.inf)
FRACTION = Rule("in [0, 1]", lambda v: 0 <= v <= 1)
BELOW_ONE = Rule("in [0, 1)", lambda v: 0 <= v < 1)
SEED_LIMIT = 2 ** 63  # torch.manual_seed takes seeds below this
SEED = Rule("in [0, 2**63)", lambda v: 0 <= v < SEED_LIMIT)  # check_rules skips an unset (None) seed


def setting(default, help, rule=None, choices=None, resume=KEPT, aliases=(), metavar=None):
    """A dataclass field that is also a flag: --name (underscores become dashes)."""
    return dataclasses.field(default=default, metadata=dict(help=help, rule=rule, choices=choices, resume=resume,
                                                            aliases=aliases, metavar=metavar))


def same_setting(settings_class, name, default):
    """A setting of another settings class with another default (sft.py's --ckpt is chat.pth)."""
    return dataclasses.field(default=default, metadata=settings_class.__dataclass_fields__[name].metadata)


def flag_name(name):
    return "--" + name.replace("_", "-")


def add_flag(parser, name, setting_field, kind=str):
    m, default = setting_field.metadata, setting_field.default
    if kind is bool:
        parser.add_argument(flag_name(name), *m["aliases"], dest=name, action="store_true", help=m["help"])
        return
    rule = f", {m['rule'].text}" if m["rule"] else ""
    shown = "" if "(default:" in m["help"] else f" (default: {'none' if default is None else '%(default)s'})"
    parser.add_argument(flag_name(name), *m["aliases"], dest=name, type=kind, default=default, choices=m["choices"],
                        metavar=m["metavar"], help=f"{m['help']}{rule}{shown}")


def add_flags(parser, settings_class):
    """One flag for each setting of the class: first those it adds, then those of the classes it extends."""
    inherited = {f.name for base in settings_class.__mro__[1:] if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}
    for f in sorted(dataclasses.fields(settings_class), key=lambda f: f.name in inherited):
        add_flag(parser, f.name, f, _kind(f.type))


def _kind(annotation):
    """int, float, str or bool from a field's annotation (Optional[str] is str)."""
    return next((t for t in getattr(annotation, "__args__", (annotation,)) if t is not type(None)), str)


def from_args(settings_class, args):
    return settings_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)})


def check_rules(settings):
    """UserError for the first setting that breaks its rule or is not one of its choices (a value --resume read
    from a checkpoint met no parser). NaN and infinity break every numeric rule."""
    for f in dataclasses.fields(settings):
        value, rule, choices = getattr(settings, f.name), f.metadata.get("rule"), f.metadata.get("choices")
        if rule and value is not None and not (value == value and rule.holds(value)):
            raise UserError(f"{flag_name(f.name)} must be {rule.text}, got {value}")
        if choices and value not in choices:
            raise UserError(f"{flag_name(f.name)} must be one of {', '.join(choices)}, got {shown(value)}")


def resumed(settings, saved, given, where):
    """The settings a --resume runs with: the saved ones (the checkpoint's dict), but for LOCAL settings and the
    flags given (named in `given`); a FIXED setting may be given only as it was saved."""
    values = {}
    for f in dataclasses.fields(settings):
        name, mine, policy = f.name, getattr(settings, f.name), f.metadata.get("resume", KEPT)
        if policy == LOCAL or name not in saved:
            values[name] = mine
            continue
        theirs, kind = saved[name], _kind(f.type)
        # A saved value must be of the setting's kind: an int is a float too, a bool is not an int.
        fits = type(theirs) in (int, float) if kind is float else type(theirs) is kind
        if not (fits or theirs is None and f.default is None):
            raise UserError(f"{where} is damaged: its {flag_name(name)} is {theirs!r}")
        if policy == FIXED and name in given and mine != theirs:
            raise UserError(f"{flag_name(name)} {mine} cannot change when resuming: {where} was trained with "
                            f"{theirs}, and its weights and optimizer state fit only that")
        values[name] = mine if name in given else theirs
    return type(settings)(**values)


def given_flags(parser, argv, args):
    """The names of the flags the command line gave; every other name in args holds its default."""
    unset = object()
    seen = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args), unset)))
    return {name for name, value in vars(seen).items() if value is not unset}


# The settings every script that loads a checkpoint shares.

def ckpt_setting(default, help):
    return setting(default, help, resume=LOCAL, aliases=("--checkpoint",))


def device_setting():
    return setting("auto", "auto: cuda, mps, dml, then cpu", choices=DEVICE_CHOICES, resume=LOCAL)


def seed_setting(default=1337, help="seeds everything"):
    return setting(default, help, rule=SEED)


def check_seed(seed, following=0):
    """UserError unless seed (and the `following` seeds after it, one a sample) are valid seeds."""
    if seed is not None and not 0 <= seed < SEED_LIMIT - following:
        limit = "2**63" + (f" - {following}" if following else "")
        raise UserError(f"--seed must be in [0, {limit}), got {seed}")


"""The flags several scripts share, each defined once: --ckpt, --device and --seed."""
from device import DEVICE_CHOICES
from errors import UserError

SEED_LIMIT = 2 ** 63  # torch.manual_seed takes seeds below this


def add_ckpt_flag(parser, default, help):
    """--ckpt (or --checkpoint): the checkpoint a script reads or writes."""
    parser.add_argument("--ckpt", "--checkpoint", dest="ckpt", default=default,
                        help=help + " (default: %(default)s)")


def add_device_flag(parser):
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                        help="auto: cuda, mps, dml, then cpu (default: %(default)s)")


def add_seed_flag(parser, default=1337, help="seeds everything"):
    shown = "none" if default is None else "%(default)s"
    parser.add_argument("--seed", type=int, default=default, help=f"{help}, 0 to 2**63-1 (default: {shown})")


def check_seed(seed, following=0):
    """UserError unless seed (and the `following` seeds after it, one a sample) are valid seeds."""
    if seed is not None and not 0 <= seed < SEED_LIMIT - following:
        limit = "2**63" + (f" - {following}" if following else "")
        raise UserError(f"--seed must be in [0, {limit}), got {seed}")

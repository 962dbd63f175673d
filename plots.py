"""The metrics CSV that training writes, and the loss curves drawn from it.

    python plots.py --out assets/optimizers.png muon=muon.csv adamw=adamw.csv

draws val loss against wall time for several runs, one line per run.
"""

from errors import stop_cleanly

stop_cleanly(__name__)  # first of all, so a Ctrl-C while the slow imports load is one line too

import csv
import math

from errors import ArgumentParser, UserError, run_main, short_reason
from files import atomic_write, check_input_file, check_output_path, claimed, refuse_existing


def write_metrics(path, rows):
    """Rewrite the whole CSV atomically, so it always matches the checkpoint's history; a row lacking a column (only
    evaluations have val scores) leaves its cell empty."""
    if not path or not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    try:
        with atomic_write(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or short_reason(e)}") from None


def read_metrics(path):
    """The rows of a metrics CSV, as dicts of strings."""
    check_input_file(path, "metrics CSV")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:  # csv.Error: a NUL byte, a field over the size limit
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or short_reason(e)}") from None
    if not rows or not {"elapsed_s", "val_loss"} <= set(rows[0]):
        raise UserError(f"{path} is not a metrics CSV from train.py")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        for column, value in row.items():
            if value not in (None, ""):
                try:
                    float(value)
                except (TypeError, ValueError):
                    raise UserError(f"{path} line {line}: {column} is {value!r}, not a number") from None
    return rows


def _figure():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=(7, 4))


def _save(plt, fig, ax, path, xlabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=110)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or short_reason(e)}") from None
    finally:
        plt.close(fig)


def _points(rows, column, x="step"):
    """(x values, values) of the rows that have a finite value in column."""
    pairs = [(float(r[x]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
    pairs = [(s, v) for s, v in pairs if math.isfinite(v)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_history(path, rows):
    """One run's train loss as logged and val loss at each evaluation, against step, on a log y-axis: the loss falls
    fastest at the start, and so the early drop and the late gains both stay visible."""
    if not path or not rows:
        return
    plt, fig, ax = _figure()
    ax.plot(*_points(rows, "train_loss"), label="train (mean since the last point)", linewidth=1)
    ax.plot(*_points(rows, "val_loss"), "o-", label="val", markersize=4)
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter
    for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_format(FormatStrFormatter("%.1f"))  # 1.5 rather than 1.5 x 10^0
    _save(plt, fig, ax, path, "step")


def plot_runs(path, runs):
    """Val loss against wall time for several runs: {label: rows}."""
    plt, fig, ax = _figure()
    for label, rows in runs.items():
        ax.plot(*_points(rows, "val_loss", "elapsed_s"), marker=".", label=label)
    _save(plt, fig, ax, path, "wall time (s)")


def main(argv=None):
    parser = ArgumentParser(description="Plot val loss against wall time for several train.py runs.")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("runs", nargs="+", metavar="LABEL=METRICS.csv", help="a label and a metrics CSV per run")
    args = parser.parse_args(argv)
    runs, paths = {}, []
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise UserError(f"{spec!r}: write each run as LABEL=METRICS.csv")
        runs[label] = read_metrics(path)
        paths.append(path)
    check_output_path(args.out, "--out", paths)
    refuse_existing(args.out, "--out", args.overwrite)
    with claimed(args.out, "--out"):
        plot_runs(args.out, runs)
    print(f"saved {args.out}")


if __name__ == "__main__":
    run_main(main)

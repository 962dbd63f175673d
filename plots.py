"""Loss curves: one run's train and val loss, or several runs' val loss side by side.

    python plots.py --out assets/optimizers.png muon=muon.csv adamw=adamw.csv

takes the metrics CSVs that train.py writes and draws val loss against wall
time, one line per run.
"""
import csv

from errors import ArgumentParser, UserError, run_main
from files import atomic_write


def _figure():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=(7, 4))


def _save(plt, fig, ax, path, xlabel):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def plot_history(path, rows):
    """Train and val loss against step for one run (rows as in metrics.csv)."""
    if not path or not rows:
        return
    plt, fig, ax = _figure()
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], label="train")
    ax.plot(steps, [r["val_loss"] for r in rows], label="val")
    _save(plt, fig, ax, path, "step")


def plot_runs(path, runs):
    """Val loss against wall time for several runs: {label: rows}."""
    plt, fig, ax = _figure()
    for label, rows in runs.items():
        ax.plot([float(r["elapsed_s"]) for r in rows], [float(r["val_loss"]) for r in rows], marker=".", label=label)
    _save(plt, fig, ax, path, "wall time (s)")


def read_metrics(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")
    if not rows or not {"elapsed_s", "val_loss"} <= set(rows[0]):
        raise UserError(f"{path} is not a metrics CSV from train.py")
    return rows


def main(argv=None):
    parser = ArgumentParser(description="Plot val loss against wall time for several train.py runs.")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("runs", nargs="+", metavar="LABEL=METRICS.csv", help="a label and a metrics CSV per run")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise UserError(f"{spec!r}: write each run as LABEL=METRICS.csv")
        runs[label] = read_metrics(path)
    plot_runs(args.out, runs)
    print(f"saved {args.out}")


if __name__ == "__main__":
    run_main(main)

import os

import matplotlib
import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

import plots
from conftest import assert_clean_error
from errors import UserError
from plots import plot_runs, read_metrics

CSV = "step,elapsed_s,train_loss,val_loss\n10,1.5,2.0,2.1\n20,3.0,1.8,1.9\n"
# a run with a train-loss row between its evaluations, which has no val loss to plot
CSV_B = "step,elapsed_s,train_loss,val_loss\n10,2.0,2.2,2.4\n15,3.5,2.0,\n20,5.0,1.9,2.0\n"


def test_runs_are_plotted_against_wall_time(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text(CSV_B)
    drawn = {}
    real_save = plots._save

    def save(plt, fig, ax, path, xlabel):  # what the axes hold, just before the file is written
        drawn.update(xlabel=xlabel, lines={line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()})
        return real_save(plt, fig, ax, path, xlabel)
    monkeypatch.setattr(plots, "_save", save)
    plot_runs(str(tmp_path / "runs.png"), {"a": read_metrics(str(tmp_path / "a.csv")),
                                           "b": read_metrics(str(tmp_path / "b.csv"))})
    assert drawn == {"xlabel": "wall time (s)", "lines": {"a": [[1.5, 2.1], [3.0, 1.9]], "b": [[2.0, 2.4], [5.0, 2.0]]}}
    image = matplotlib.image.imread(str(tmp_path / "runs.png"))
    assert image.shape == (440, 770, 4)  # 7 x 4 inches at 110 dpi, RGBA
    pixels = image[..., :3].reshape(-1, 3)
    assert (pixels.min(axis=1) < 0.9).mean() > 0.01  # not blank: axes, labels and lines are drawn
    for color in ("C0", "C1"):  # each run's line, in its own color
        rgb = np.array(matplotlib.colors.to_rgb(color))
        assert (np.abs(pixels - rgb).max(axis=1) < 0.05).sum() > 50, color


def test_bad_inputs(tmp_path, cli, monkeypatch):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UserError, match="not a metrics CSV"):
        read_metrics(str(tmp_path / "bad.csv"))
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli(plots, "no-label.csv"), "LABEL=METRICS.csv")
    assert_clean_error(cli(plots, "a=missing.csv"), "missing.csv not found")
    for column, row in (("elapsed_s", "1,abc,4.0"), ("val_loss", "1,2.0,x1"), ("step", "one,2.0,4.0")):
        (tmp_path / "odd.csv").write_text(f"step,elapsed_s,val_loss\n1,1.0,4.1\n{row}\n")
        assert_clean_error(cli(plots, "a=odd.csv"), f"odd.csv line 3: {column} is")
        assert not (tmp_path / "runs.png").exists()
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would wait forever for a writer
    assert_clean_error(cli(plots, "a=pipe.csv"), "not a regular file")
    assert_clean_error(cli(plots, "a=."), "is a folder")


def test_bad_flags_exit_2(tmp_path, cli, monkeypatch):
    (tmp_path / "a.csv").write_text(CSV)
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli(plots), "the following arguments are required: LABEL=METRICS.csv")
    assert_clean_error(cli(plots, "--bogus", "a=a.csv"), "unrecognized arguments: --bogus")
    assert_clean_error(cli(plots, "--out", "nowhere/runs.png", "a=a.csv"), "does not exist", "nowhere/runs.png")
    assert_clean_error(cli(plots, "--out", ".", "a=a.csv"), "is a folder")
    assert sorted(os.listdir(tmp_path)) == ["a.csv"]

import os

import pytest

import plots
from conftest import assert_clean_error
from errors import UserError
from plots import plot_runs, read_metrics

CSV = "step,elapsed_s,train_loss,val_loss\n10,1.5,2.0,2.1\n20,3.0,1.8,1.9\n"


def test_runs_are_plotted_against_wall_time(tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    plot_runs(str(tmp_path / "runs.png"), {"a": read_metrics(str(tmp_path / "a.csv"))})
    assert (tmp_path / "runs.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs(tmp_path, cli, monkeypatch):
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(UserError, match="not a metrics CSV"):
        read_metrics(str(tmp_path / "bad.csv"))
    monkeypatch.chdir(tmp_path)
    assert_clean_error(cli(plots, "no-label.csv"), "LABEL=METRICS.csv")
    assert_clean_error(cli(plots, "a=missing.csv"), "missing.csv not found")
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would wait forever for a writer
    assert_clean_error(cli(plots, "a=pipe.csv"), "not a regular file")
    assert_clean_error(cli(plots, "a=."), "is a folder")

"""run_main: what a user sees when a script stops early."""
import pytest

from errors import UserError, run_main


def test_a_user_error_is_one_line_and_status_2(capsys):
    def main(argv):
        raise UserError("data file nope.txt not found")
    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: data file nope.txt not found\n"


def test_an_interrupt_is_one_line_and_status_130(capsys):
    def main(argv):
        raise KeyboardInterrupt  # Ctrl-C, or a SIGTERM, in a script with nothing to save
    with pytest.raises(SystemExit) as e:
        run_main(main, [])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"

"""`elastic lab chaos` options: budgets, faults and operations are checked before anything starts."""

from __future__ import annotations

import pytest

from elastic.lab.chaos.cli import parse
from elastic.lab.chaos.runner import OPERATIONS
from elastic.lab.chaos.storms import FAULTS


def test_defaults_run_every_fault_and_operation_with_two_clouds() -> None:
    options = parse(["--seed", "3", "--ops", "50"])
    assert (options.seed, options.ops, options.seconds, options.clouds) == (3, 50, None, 2)
    assert options.faults == FAULTS and options.operations == tuple(OPERATIONS) and options.kills
    assert options.progress == 60.0


def test_a_subset_of_faults_and_operations() -> None:
    options = parse(["--seed", "1", "--seconds", "60", "--clouds", "3", "--faults", "none",
                     "--operations", "resume,suspend", "--no-kills"])
    assert options.faults == () and options.operations == ("resume", "suspend") and not options.kills


@pytest.mark.parametrize("argv", [["--seed", "1"], ["--seed", "1", "--ops", "5", "--seconds", "5"],
                                  ["--seed", "1", "--ops", "0"], ["--seed", "1", "--ops", "5", "--clouds", "4"],
                                  ["--seed", "1", "--ops", "5", "--faults", "meteor"],
                                  ["--seed", "1", "--ops", "5", "--operations", "reboot"],
                                  ["--seed", "1", "--ops", "5", "--progress", "-1"]])
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2

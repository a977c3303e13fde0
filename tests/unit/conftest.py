"""Unit tests never start a program: an unfaked scontrol call would reach a real Slurm.

Code under test takes a runner (elastic.slurm.Runner) or another collaborator; a unit test passes a
fake one. Anything that still reaches subprocess or os.system fails here, loudly, instead of
running (as cloud-init's `disable_subp_usage` does).
"""

from __future__ import annotations

import os
import subprocess

import pytest


class UnexpectedProgramRun(AssertionError):
    """A unit test tried to run a program instead of using a fake collaborator."""


def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise UnexpectedProgramRun(
            f"unit test called {name}{args!r}: pass a fake runner or mock the collaborator instead")

    return refuse


@pytest.fixture(autouse=True)
def no_programs(monkeypatch):
    """Fail any subprocess.run/Popen/call/check_call/check_output or os.system in a unit test."""
    for name in ("run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        monkeypatch.setattr(subprocess, name, _refuse(f"subprocess.{name}"))
    monkeypatch.setattr(os, "system", _refuse("os.system"))

#!/usr/bin/env python3
"""Slurm ResumeFailProgram: delete what a failed resume left and return the nodes to idle~.

slurm.conf names this file (absolute path, not group- or world-writable) or the installed
console script of the same entry point. Usage: resume_fail.py HOSTLIST [--config PATH]
"""

from elastic.process import repair_process

# Before anything opens a file: slurmctld 22.05 starts us with fds 0, 1 and 2 closed.
repair_process()

from elastic.cli import resume_fail_program  # noqa: E402

resume_fail_program()

#!/usr/bin/env python3
"""Slurm ResumeProgram: boot OpenStack servers for the Slurm nodes in argv[1].

slurm.conf names this file (absolute path, not group- or world-writable) or the installed
console script of the same entry point. Usage: resume.py HOSTLIST [--config PATH]
"""

from elastic.process import repair_process

# Before anything opens a file: slurmctld 22.05 starts us with fds 0, 1 and 2 closed.
repair_process()

from elastic.cli import resume_program  # noqa: E402

resume_program()

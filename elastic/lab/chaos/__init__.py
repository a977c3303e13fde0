"""`elastic lab chaos`: a soak that runs the real programs against the emulator, with faults, kills
and overlapping calls, and then checks the invariants of docs/design.md at quiescence.

Slurm's part is played by a model (`model.SlurmModel`) of slurmctld's power-save state machine, not
by a real slurmctld: see model.py for what it models and what it leaves out.
"""

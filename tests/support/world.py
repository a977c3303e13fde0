"""Shared by the e2e tests that drive a LabWorld (emulator + real Slurm + elastic): submitting jobs
and reading their state as Slurm shows it."""

from __future__ import annotations

from elastic.lab.world import LabWorld


def submit(world: LabWorld, *args: str) -> int:
    out = world.slurm.run("sbatch", "--parsable", f"--output={world.workdir}/job-%j.out", *args)
    return int(out.strip().split(";")[0])


def job_state(world: LabWorld, job_id: int) -> str:
    out = world.slurm.run("scontrol", "-o", "show", "job", str(job_id))
    return next(f.split("=", 1)[1] for f in out.split() if f.startswith("JobState="))

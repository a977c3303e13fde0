"""A real Slurm cluster on one machine, for tests and the demo: Debian's munged, slurmctld and
one slurmd per node, everything under one work directory, torn down by pid.

See docs/lab-slurm.md for how it works and which Slurm quirks shape it.
"""

from elastic.lab.slurm.cluster import LocalSlurm, LocalSlurmError
from elastic.lab.slurm.cluster_conf import free_ports

__all__ = ["LocalSlurm", "LocalSlurmError", "free_ports"]

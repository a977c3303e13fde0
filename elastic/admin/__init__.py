"""The admin's commands: check, status, reconcile, slurm-conf."""

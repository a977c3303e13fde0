"""elastic: Slurm power-saving programs that boot and delete OpenStack servers."""

__version__ = "0.1.0"

"""The three power-save flows as plain functions over injected collaborators (see Services)."""

from elastic.power.outcome import Failure, Outcome
from elastic.power.resume import resume
from elastic.power.resume_fail import resume_fail
from elastic.power.services import Services
from elastic.power.suspend import suspend

__all__ = ["Failure", "Outcome", "Services", "resume", "resume_fail", "suspend"]

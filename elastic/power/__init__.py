"""The three power-save flows as plain functions over injected collaborators (see Services)."""

from elastic.power.boot import resume
from elastic.power.outcome import Failure, Outcome
from elastic.power.release import resume_fail, suspend
from elastic.power.services import Services

__all__ = ["Failure", "Outcome", "Services", "resume", "resume_fail", "suspend"]

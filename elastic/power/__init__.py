"""The three power-save flows as plain functions over injected collaborators (see Services):
power.resume, power.suspend and power.resume_fail, each imported on its own so that a program
loads only its own flow (a one-node suspend's start-up is mostly imports)."""

"""The training loop and what it writes: schedules, the run folder, checkpoints."""

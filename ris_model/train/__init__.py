"""Running a job: the phase trainer, its checkpoints, metric sinks, step hooks and the one-call job entry."""

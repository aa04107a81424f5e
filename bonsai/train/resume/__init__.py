"""Going on where a run stopped: checkpoints, resharding them to another layout, resizing the run to
another number of processes, noticing changed data, and stopping cleanly on a preemption signal."""

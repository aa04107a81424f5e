"""Watching a run: loggers (JSONL, console, W&B), the instability monitor, throughput and memory
figures, and `bonsai report`."""

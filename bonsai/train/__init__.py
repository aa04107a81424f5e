"""Training: the recipe (setup, fit, finish), its callbacks, one optimizer step, checkpoints,
preemption, the distributed boundary and DeepSpeed's config, and `bonsai export`."""

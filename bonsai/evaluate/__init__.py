"""Probing and comparing models: generation with the training template, text metrics, `bonsai eval`."""

"""Ways of sharding training across processes, each one object the trainer asks (bonsai.train.strategies.base)."""

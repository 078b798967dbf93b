"""Training engine: config, data, AGC, optimizer/EMA/schedule, loop, checkpoints, DDP."""

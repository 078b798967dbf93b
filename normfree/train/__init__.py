"""Training engine: config, data, AGC, optimizer/EMA/schedule, loop, checkpoints, DDP (docs/training.md)."""
from .agc import agc_params, clip_grad_agc_
from .config import TrainConfig
from .per_example import per_example_grads
from .trainer import Trainer, evaluate

__all__ = ["TrainConfig", "Trainer", "agc_params", "clip_grad_agc_", "evaluate", "per_example_grads"]

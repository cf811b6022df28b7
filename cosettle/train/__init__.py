"""Co-Settle projector training: config, optimiser/schedule, distributed helpers, trainer loop."""
from .config import TrainConfig
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]

"""Fine-tuning: one Accelerator loop for image classification, language modelling and captioning.

``mambaverse train [CONFIG.yaml] [key=value ...]``, or from Python::

    from mambaverse.train import load_config, train
    summary = train(load_config("examples/configs/digits.yaml", ["optim.lr=1e-3"]))
"""

from .config import TrainConfig, load_config
from .loop import train

__all__ = ["TrainConfig", "load_config", "train"]

"""Training: the three Ovis stages on DeepSpeed (ZeRO-2 / ZeRO-3), on CUDA or the CPU.

    from ovis.train import load_train_config, train
    final_dir = train(load_train_config("stage1.yaml", ["lr=1e-4"]))

``ovis train --config stage1.yaml`` is the same call. See :mod:`ovis.train.config` for the fields.
"""

from ovis.train.config import TrainConfig, build_deepspeed_config, dump_config, load_train_config
from ovis.train.modules import TRAIN_MODULE_TOKENS, apply_train_modules
from ovis.train.trainer import Trainer, train

__all__ = [
    "TRAIN_MODULE_TOKENS",
    "TrainConfig",
    "Trainer",
    "apply_train_modules",
    "build_deepspeed_config",
    "dump_config",
    "load_train_config",
    "train",
]

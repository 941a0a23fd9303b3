"""Training: the Ovis stages on DeepSpeed (ZeRO-2 / ZeRO-3) or a plain PyTorch loop, on CUDA or the CPU.

    from ovis.train import load_train_config, train
    final_dir = train(load_train_config("stage1.yaml", ["lr=1e-4"]))

``ovis train --config stage1.yaml`` is the same call. The package owns the config schema
(:mod:`~ovis.train.config`, every key in ``docs/training-config.md``), reading it
(:mod:`~ovis.train.loading`), the DeepSpeed JSON (:mod:`~ovis.train.deepspeed_config`), what
trains (:mod:`~ovis.train.modules`), schedules and data order (:mod:`~ovis.train.schedule`), the
run itself (:mod:`~ovis.train.trainer` and the modules it names), checkpoints and export.
"""

from ovis.train.config import TRAIN_MODULE_TOKENS, TrainConfig
from ovis.train.deepspeed_config import build_deepspeed_config
from ovis.train.loading import dump_config, load_train_config
from ovis.train.modules import apply_train_modules
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

"""The data sets' typed configuration: ``DataConfig`` (declared with the other settings in
``util.config``) and the official augmentation's sizes, which are its defaults.

``data_config_from_args`` turns ``main.py``'s flags into a ``DataConfig`` for this process's shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from util.config import CHECK_IMAGES_LEVELS, OFFICIAL_TRAIN_SCALES, DataConfig, parse_years

_FIELDS = {f.name: f.default for f in dataclasses.fields(DataConfig)}
OFFICIAL_MAX_SIZE: int = _FIELDS["max_size"]
OFFICIAL_VAL_SIZE: int = _FIELDS["val_size"]


def data_config_from_args(args: Any) -> DataConfig:
    """``main.py``'s flags -> ``DataConfig``; ``rank`` / ``world_size`` from the initialised
    process group (1 process otherwise)."""
    from util import distributed as dist_utils  # torch: imported when a data set is built

    return DataConfig.from_args(args, rank=dist_utils.get_rank(), world_size=dist_utils.get_world_size())


__all__ = [
    "CHECK_IMAGES_LEVELS",
    "DataConfig",
    "OFFICIAL_MAX_SIZE",
    "OFFICIAL_TRAIN_SCALES",
    "OFFICIAL_VAL_SIZE",
    "data_config_from_args",
    "parse_years",
]

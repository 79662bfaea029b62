"""The public names of :mod:`ssmtl.api.ssl`, listed once (see :mod:`ssmtl.api._lazy`)."""

from ssmtl.api.ssl.distributed import (
    concat_all_gather as concat_all_gather,
    is_distributed as is_distributed,
    rank as rank,
    shuffle_bn_forward as shuffle_bn_forward,
    world_size as world_size,
)
from ssmtl.api.ssl.losses import (
    info_nce as info_nce,
    multi_positive_info_nce as multi_positive_info_nce,
)
from ssmtl.api.ssl.momentum import (
    MomentumSchedule as MomentumSchedule,
    ema_momentum as ema_momentum,
    initial_weight_share as initial_weight_share,
)
from ssmtl.api.ssl.queue import (
    KeyQueue as KeyQueue,
)
from ssmtl.api.ssl.split_bn import (
    MIN_SPLIT_BN_GROUP as MIN_SPLIT_BN_GROUP,
    batchnorm_layers as batchnorm_layers,
    set_split_batchnorm as set_split_batchnorm,
    split_batchnorm as split_batchnorm,
    split_bn_forward as split_bn_forward,
    split_bn_groups as split_bn_groups,
    split_bn_groups_in_units as split_bn_groups_in_units,
)

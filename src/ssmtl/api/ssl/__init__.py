"""``ssmtl.api.ssl``: the momentum-contrast kit a contrastive task plugin builds on.

* :func:`info_nce`, :func:`multi_positive_info_nce`: the InfoNCE losses;
* :class:`KeyQueue`: the queue of negative keys, filled with keys gathered from every process;
* :func:`concat_all_gather`, :func:`shuffle_bn_forward`, :func:`rank`, :func:`world_size`,
  :func:`is_distributed`: working across processes (shuffle BatchNorm);
* :func:`split_bn_forward`, :func:`split_bn_groups`, :func:`split_batchnorm`,
  :func:`set_split_batchnorm`, :func:`split_bn_groups_in_units`, :func:`batchnorm_layers`:
  split BatchNorm in one process (the key side and the query side);
* :func:`ema_momentum`, :func:`initial_weight_share`, :class:`MomentumSchedule`: the
  momentum (key) encoder's schedule.

Only tasks that contrast instances need it, so it sits beside the contracts of
:mod:`ssmtl.api` rather than among them. Names load on first use; each is listed once, in
``__init__.pyi``.
"""

from ssmtl.api._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, __file__)

"""Loss functions shared by several tasks, one module per loss."""

from ssmtl.core.losses.info_nce import info_nce, multi_positive_info_nce

__all__ = ["info_nce", "multi_positive_info_nce"]

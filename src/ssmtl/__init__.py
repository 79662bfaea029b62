"""ssmtl: self-supervised multi-task pre-training on sequential medical images.

Implements the method of Dong, Kampffmeyer and Voiculescu, "Self-supervised
multi-task representation learning for sequential medical images" (ECML PKDD 2021):
several pretext tasks train one shared encoder-decoder at once, exploiting the
order and anatomy of consecutive slices.
"""

__version__ = "0.1.0"

from ssmtl.api.hooks import hookimpl  # noqa: E402  (the only thing plugins need)

__all__ = ["__version__", "hookimpl"]

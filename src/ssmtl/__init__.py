"""ssmtl: self-supervised multi-task pre-training on sequential medical images.

Implements the method of Dong, Kampffmeyer and Voiculescu, "Self-supervised
multi-task representation learning for sequential medical images" (ECML PKDD 2021):
several pretext tasks train one shared encoder-decoder at once, exploiting the
order and anatomy of consecutive slices.

The Python API runs the same code as the command line::

    from ssmtl import pretrain, finetune, evaluate, predict, load_network

    pretrain("data.h5", "runs/pre", tasks=["contrastive", "order"], steps=500)
    finetune("data.h5", "runs/ft", init="runs/pre", labeled_volumes=2)
    print(evaluate("runs/ft").mean_dice)
    model = load_network("runs/ft")          # a torch module: images -> logits

Every function raises :class:`ssmtl.api.SsmtlError` on bad input. Names load on first
use, so ``import ssmtl`` (and ``ssmtl --help``) stays fast; each is listed once, in
``__init__.pyi``.
"""

from ssmtl._version import __version__ as __version__  # eager: cheap, and asked for first
from ssmtl.api._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, __file__)

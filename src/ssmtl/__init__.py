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
use, so ``import ssmtl`` (and ``ssmtl --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ssmtl.api.hooks import hookimpl  # noqa: E402  (the only thing plugins need)

# public function -> the module that defines it
_API: dict[str, str] = {
    "pretrain": "ssmtl.pretraining.python_api",
    "finetune": "ssmtl.downstream.python_api",
    "evaluate": "ssmtl.downstream.python_api",
    "predict": "ssmtl.downstream.python_api",
    "load_network": "ssmtl.publish.runs",
    "export": "ssmtl.publish.hub",
    "report": "ssmtl.publish.report",
}
_DEFINED_AS = {"export": "export_run", "report": "write_report"}

__all__ = ["__version__", "hookimpl", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ssmtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _DEFINED_AS.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what static type checkers and IDEs see
    from ssmtl.downstream.python_api import evaluate, finetune, predict
    from ssmtl.pretraining.python_api import pretrain
    from ssmtl.publish.hub import export_run as export
    from ssmtl.publish.report import write_report as report
    from ssmtl.publish.runs import load_network

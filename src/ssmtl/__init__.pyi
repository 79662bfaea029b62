"""The Python API of :mod:`ssmtl`, listed once (see :mod:`ssmtl.api._lazy`)."""

from ssmtl._version import __version__ as __version__
from ssmtl.api.hooks import hookimpl as hookimpl
from ssmtl.pretraining.python_api import pretrain as pretrain
from ssmtl.downstream.python_api import (evaluate as evaluate, finetune as finetune, predict as predict,
                                         score_predictions as score_predictions)
from ssmtl.publish.python_api import export as export, load_network as load_network, report as report

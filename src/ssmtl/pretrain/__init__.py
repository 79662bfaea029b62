"""Multi-task pre-training: config, module, engine, weighting, compile.

The package is also the Python API's pre-training function: ``ssmtl.pretrain(data, out, ...)``
runs :func:`ssmtl.pretrain.python_api.pretrain`. A package and a function cannot share the
name ``ssmtl.pretrain`` (importing any module of the package sets that attribute of
``ssmtl`` to the package), so the package itself is made callable, with the function's
signature and documentation; ``ssmtl.pretrain.engine`` and the rest stay where they are.
"""

from __future__ import annotations

import sys
import types


class _CallablePackage(types.ModuleType):
    """``ssmtl.pretrain(...)`` calls :func:`ssmtl.pretrain.python_api.pretrain`."""

    def __call__(self, *args, **kwargs):
        from ssmtl.pretrain.python_api import pretrain

        return pretrain(*args, **kwargs)

    @property
    def __signature__(self):  # what inspect.signature and IDE help show
        import inspect

        from ssmtl.pretrain.python_api import pretrain

        return inspect.signature(pretrain)


sys.modules[__name__].__class__ = _CallablePackage

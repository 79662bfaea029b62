"""The validation rules every config model shares, plugin configs included.

* ``CONFIG_RULES``: unknown keys are refused (a typo must not be ignored) and so is every
  non-finite number: ``inf``, ``-inf`` and ``nan`` are never a meaningful learning rate,
  weight or probability, and an infinite one only shows up later as NaN weights.
  Every config base (``TaskConfig``, ``DatasetConfig``, ``HeadConfig``, ``NetworkConfig``
  and the engine's own sections) uses it, so a plugin's subclass inherits it.
* :data:`AbsolutePath`: a path made absolute (not resolved: symlinks stay) when validated, so
  a run that records it can be used from any directory (``ssmtl evaluate /abs/run``).
* :data:`Seed`: seeds reach NumPy's and torch's generators, which take 0 .. 2**32 - 1;
  a value outside is refused at validation with the field named, not deep in NumPy.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AfterValidator, ConfigDict, Field
from typing_extensions import Annotated

CONFIG_RULES = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_SEED = 2**32 - 1
#: a seed field: ``seed: Seed = 0``
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: a path field stored absolute: ``data: AbsolutePath``
AbsolutePath = Annotated[Path, AfterValidator(lambda path: Path(os.path.abspath(path)))]

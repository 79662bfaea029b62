"""The config bases every plugin's options derive from: tasks, networks and heads.

Kept apart from the contracts that use them (:mod:`ssmtl.api.tasks`, :mod:`ssmtl.api.network`,
:mod:`ssmtl.api.heads`, which need torch) so that a config can be read, validated and shown
(``ssmtl pretrain --help``, ``ssmtl config show``) without importing torch.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ssmtl.api.rules import CONFIG_RULES


class TaskConfig(BaseModel):
    """Options every task has. Subclasses set ``name: Literal["their-name"]``."""

    model_config = CONFIG_RULES
    name: str
    weight: float = Field(1.0, ge=0, description="Fixed weight of this task's loss in the sum (also the initial weight of adaptive schemes).")
    warmup_steps: int = Field(0, ge=0, description="Ramp this task's weight linearly from 0 over this many steps.")


class NetworkConfig(BaseModel):
    """Options every network has. Subclasses set ``name: Literal["their-name"] = "their-name"``.

    Every other field needs a default: ``--set model.name=NAME`` alone must give a
    usable network. Runs save the config (with its ``name``) in ``config.json`` and in
    the export manifest, and rebuild the network from it.
    """

    model_config = CONFIG_RULES
    name: str


class HeadConfig(BaseModel):
    """Options every head has. Subclasses set ``name: Literal["their-name"] = "their-name"``.

    Every other field needs a default: the registry validates ``config_model()``
    when the plugin loads, and ``--head NAME`` alone must give a usable head.
    """

    model_config = CONFIG_RULES
    name: str

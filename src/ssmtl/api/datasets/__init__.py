"""The dataset toolkit: what every file-based dataset plugin needs, public and documented.

The built-in dataset plugins use only these names (through :mod:`ssmtl.api`), exactly
as a third-party dataset would.
"""

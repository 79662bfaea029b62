"""The version of ssmtl, in a module of its own: every part of the package may read it without
importing the package root (whose lazy Python API would pull the wings in)."""

__version__ = "0.1.0"

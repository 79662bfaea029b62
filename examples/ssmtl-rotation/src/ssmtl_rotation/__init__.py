"""ssmtl-rotation: an example third-party ssmtl plugin package.

* :mod:`ssmtl_rotation.rotation`: the ``rotation`` pretext task;
* :mod:`ssmtl_rotation.png_stack`: the ``png-stack`` dataset;
* :mod:`ssmtl_rotation.plugin`: the hook implementations ssmtl loads through the
  ``ssmtl`` entry point.
"""

__version__ = "0.1.0"

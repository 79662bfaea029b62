"""Multi-task pre-training: config, module, engine, weighting, compile.

The Python API's function is :func:`ssmtl.pretrain` (:mod:`ssmtl.pretraining.python_api`);
the package has its own name so that the function and the package never collide.
"""

"""What leaves ssmtl: weights in formats other code loads (``ssmtl export``, with a model
card), and pages people read (``ssmtl report``)."""

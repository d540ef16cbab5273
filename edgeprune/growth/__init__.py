"""Growth: train a model from a shallow seed and add blocks when FRAGrow's overfitting risk says so.

`network.py` (stages, seed, one block at a time), `policy.py` (when to grow), `train.py` (the one trainer of
every policy), `run.py` (`edgeprune grow` as a library call).
"""

"""edgeprune: make a PyTorch model meet a latency budget on a named edge device, and prove it there.

The public API mirrors the CLI verbs; heavy imports happen on first use so `import edgeprune` stays instant.
"""

__version__ = "0.1.0"
__all__ = ["profile", "prune", "adapt", "distill", "grow", "load", "export", "validate", "load_table", "Criterion",
           "ScoreContext", "register_criterion"]
_CRITERIA = ("Criterion", "ScoreContext", "register_criterion")


def __getattr__(name):
    if name in _CRITERIA:
        from .pruning import criteria

        return getattr(criteria, name)
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")

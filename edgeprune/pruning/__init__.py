"""Structural pruning: dependency groups (Torch-Pruning's engine), importance criteria, the budget solver."""

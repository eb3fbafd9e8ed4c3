"""Hydra plugins of mnist1d_lab (the batched launcher)."""

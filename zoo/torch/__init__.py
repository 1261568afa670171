"""PyTorch backend (in progress)."""

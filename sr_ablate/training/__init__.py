"""Training: the loop (``fit``), losses, resumable checkpoints, and ``job`` (one config -> one
tracked run)."""

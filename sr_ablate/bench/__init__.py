"""Measurements behind ``sr-ablate bench``: training throughput and fixed costs."""

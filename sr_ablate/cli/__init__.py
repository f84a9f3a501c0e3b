"""The command line: ``main`` dispatches ``sr-ablate [train] | evaluate | report | download |
bench``."""

"""Helpers of the end-to-end benchmark: the no-op task of each system, run in their processes."""

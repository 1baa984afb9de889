"""Leaf helpers every layer may import: they import nothing of the suite."""

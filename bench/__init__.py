"""Measurement machinery shared by every engine: the timer, cell isolation, results and environment."""

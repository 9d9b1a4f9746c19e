"""mexit: multi-exit training regimes, reproducible."""
__version__ = "0.2.0"

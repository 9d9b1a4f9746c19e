"""mexit: multi-exit training regimes, reproducible."""
from mexit.memory import keep_freed_memory

__version__ = "0.2.0"
KEEPS_FREED_MEMORY = keep_freed_memory()
"""Whether this process keeps freed CPU memory for reuse (see `mexit.memory`)."""

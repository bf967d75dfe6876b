"""
refresherd: a cache-refresh service.

Applications ask for a value by job and arguments; refresherd answers at once,
fresh or stale, and refreshes stale values in the background, once however many
callers ask (stale-while-revalidate with single-flight).
"""

from refresherd.result import Result

__all__ = ["Result", "__version__"]

__version__ = "0.1.0"

"""Reference Dramatiq worker: job classes, retries, rate limits, metrics and health."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("worker-monitoring")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

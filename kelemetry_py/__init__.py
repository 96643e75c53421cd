"""kelemetry-py: Kubernetes control-plane tracer."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kelemetry-py")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

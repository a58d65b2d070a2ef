"""The Satchel process: configuration, supervision, the APIs, signals, the CLI, the service.

The only package that wires `store` and `ingest` together.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("satchel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

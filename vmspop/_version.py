"""The version of vmspop, kept apart so that setup.cfg can read it without importing Twisted."""

__version__ = "0.1.0"

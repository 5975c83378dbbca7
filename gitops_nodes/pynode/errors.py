"""The errors the in-container runtime raises before it serves; each names the file at fault.

PyNodeError
├── ConfigError    the node's config, or its code, is not something we can serve
└── PrepareError   the checkpoint cannot be loaded, or the set-up code raised
"""

from __future__ import annotations


class PyNodeError(Exception):
    """Base of the errors that stop a python node's instance from starting."""


class ConfigError(PyNodeError):
    """The node's config is invalid, or does not match its code (e.g. an unused variable)."""


class PrepareError(PyNodeError):
    """Preparing the instance failed: its checkpoint did not load or its set-up code raised."""

"""Errors specific to the agents' work, as leaves of the one tree in :mod:`mesh.errors`.

Each subclasses the mesh error whose wire code fits, so a peer that only knows the mesh
tree still gets the right class (``DataError`` arrives as ``Malformed``'s code, and so on).
"""

from __future__ import annotations

from mesh.errors import ConfigError, HandlerError, Malformed, Unavailable


class DataError(ConfigError):
    """The data given (a CSV, an array, a batch of ticks) is invalid; nothing was changed."""


class ArtifactError(Malformed):
    """A model artifact is corrupt, altered (sha256 mismatch) or of an unknown format."""


class UntrustedArtifact(ArtifactError):
    """A model artifact holds a type outside the allow-list; it was not loaded."""


class HealthCheckFailed(HandlerError):
    """A new model version failed its deploy-time check; the previous version still serves."""


class NoModelDeployed(Unavailable):
    """A prediction was asked of a registry that has no active version."""

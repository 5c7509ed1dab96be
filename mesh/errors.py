"""The one error tree of agp-mesh.

Every error a caller can see derives from :class:`Error`. Errors that a peer reports on the
wire carry an :class:`ErrorCode` (the numbers of ``agp.v1.ErrorCode``) and map back to the
same class on the receiving side through :func:`error_from_code`, so ``except
mesh.Overloaded`` works whether the router or an agent said it. Where a builtin exception
fits, the class mixes it in (``DeadlineExceeded`` is also a ``TimeoutError``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ErrorCode(IntEnum):
    """Wire error codes; mirrors ``agp.v1.ErrorCode`` (a test keeps them equal)."""

    OK = 0
    UNAUTHENTICATED = 1
    FORBIDDEN = 2
    NO_SUCH_SERVICE = 3
    OVERLOADED = 4
    DEADLINE_EXCEEDED = 5
    MALFORMED = 6
    TOO_LARGE = 7
    UNAVAILABLE = 8
    UNKNOWN_SESSION = 9
    HANDLER_ERROR = 10
    NO_SUCH_ACTION = 11
    CANCELLED = 12
    INTERNAL = 13
    DRAINING = 14
    REPLAYED = 15
    VERSION_MISMATCH = 16
    NOT_A_RECIPIENT = 17


class Error(Exception):
    """Root of every agp-mesh error."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, details: dict[str, str] | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.details: dict[str, str] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Unauthenticated(Error, PermissionError):
    code = ErrorCode.UNAUTHENTICATED


class NotARecipient(Unauthenticated):
    """A payload sealed end to end reached an instance it was not sealed for: the sender's
    list of the service's keys predates that instance. Its handler did not run."""

    code = ErrorCode.NOT_A_RECIPIENT


class Forbidden(Error, PermissionError):
    code = ErrorCode.FORBIDDEN


class NoSuchService(Error, LookupError):
    code = ErrorCode.NO_SUCH_SERVICE


class Overloaded(Error):
    code = ErrorCode.OVERLOADED


class DeadlineExceeded(Error, TimeoutError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Malformed(Error, ValueError):
    code = ErrorCode.MALFORMED


class TooLarge(Error, ValueError):
    code = ErrorCode.TOO_LARGE


class Unavailable(Error, ConnectionError):
    code = ErrorCode.UNAVAILABLE


class UnknownSession(Error, ConnectionError):
    code = ErrorCode.UNKNOWN_SESSION


class HandlerError(Error):
    """The remote handler raised; ``details['type']`` names the remote exception."""

    code = ErrorCode.HANDLER_ERROR


class NoSuchAction(Error, LookupError):
    code = ErrorCode.NO_SUCH_ACTION


class Cancelled(Error):
    code = ErrorCode.CANCELLED


class InternalError(Error):
    code = ErrorCode.INTERNAL


class Draining(Error):
    code = ErrorCode.DRAINING


class Replayed(Error, PermissionError):
    code = ErrorCode.REPLAYED


class VersionMismatch(Error):
    code = ErrorCode.VERSION_MISMATCH


class CircuitOpen(Error):
    """The client's circuit breaker for this destination is open; nothing was sent."""

    code = ErrorCode.UNAVAILABLE


class ConfigError(Error, ValueError):
    """A configuration, spec or argument is invalid; nothing was started or changed."""

    code = ErrorCode.MALFORMED


class Closed(Error, RuntimeError):
    """The mesh client was closed."""

    code = ErrorCode.CANCELLED


# refused before any handler ran it: always safe to try again (a draining instance, or an
# agent that began draining while the router was handing it the call, refuses it unrun;
# balanced, the retry goes to another instance)
NEVER_DISPATCHED: tuple[type[Error], ...] = (Overloaded, NoSuchService, Draining)
# may have run at the agent: retried only when the caller says it is safe
MAYBE_RAN: tuple[type[Error], ...] = (Unavailable, DeadlineExceeded, InternalError)

_BY_CODE: dict[int, type[Error]] = {
    cls.code: cls
    for cls in (
        Unauthenticated, Forbidden, NoSuchService, Overloaded, DeadlineExceeded, Malformed,
        TooLarge, Unavailable, UnknownSession, HandlerError, NoSuchAction, Cancelled,
        InternalError, Draining, Replayed, VersionMismatch, NotARecipient,
    )
}


def error_from_code(code: int, message: str = "", details: dict[str, str] | None = None) -> Error:
    """Build the exception for a wire error code; unknown codes become InternalError."""
    cls = _BY_CODE.get(code, InternalError)
    return cls(message, details=details)

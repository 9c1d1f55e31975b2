"""Typed errors of the wire layer.

Decoding arbitrary bytes either returns a value or raises one of these; never IndexError,
struct.error or ValueError. Every error carries the byte offset (relative to the start of the
buffer handed to the top-level decoder) where the problem was found, so that a user who pasted
bytes from Wireshark can see where they go wrong.
"""

from mpsim.errors import MpsimError


class WireError(MpsimError):
    """Bytes that cannot be decoded, or a value that cannot be encoded.

    ``offset`` is the byte offset of the problem in the decoded buffer (``None`` for encoding).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{message}{where}")

    def shifted(self, base_offset: int) -> "WireError":
        """The same error with its offset moved by ``base_offset`` (for nested decoders)."""
        offset = None if self.offset is None else self.offset + base_offset
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        WireError.__init__(clone, self.message, offset)
        return clone


class TruncatedError(WireError):
    """The buffer ends before the structure does: more bytes could make it decodable.

    ``needed_bytes`` is the minimum total length the buffer must have (when known).
    """

    def __init__(self, message: str, offset: int | None = None, needed_bytes: int | None = None) -> None:
        self.needed_bytes = needed_bytes
        super().__init__(message, offset)


class MalformedError(WireError):
    """The bytes violate the format: no amount of further input makes them valid."""


class InvalidValueError(WireError):
    """A value handed to an encoder is out of range for its field (a local mistake)."""


class OptionSpaceError(InvalidValueError):
    """TCP options that do not fit in the 40 bytes a TCP header can carry (RFC 9293 3.1)."""

    def __init__(self, requested_bytes: int, limit_bytes: int = 40) -> None:
        self.requested_bytes = requested_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"TCP options need {requested_bytes} bytes (padded to 4-byte words) "
            f"but a TCP header holds at most {limit_bytes}"
        )

"""Moving bytes between two sockets in one direction: splice through a pipe, or recv/send copies.

The converter relays each direction of a converted connection with a :class:`Pump`. Two ways:

* ``SPLICE``: socket -> pipe -> socket with :func:`os.splice`, the bytes never enter Python.
* ``COPY``: ``recv_into`` a buffer, ``send`` it on.

Neither wins everywhere on Linux 6.18 (docs/kernel-facts.md): splicing *from* an MPTCP socket is not
zero-copy (MPTCP has no splice_read) and costs more CPU than recv/send (723 vs 510 ms/GB), while
splicing from a TCP socket is cheaper (TCP->MPTCP 603 vs 767, TCP->TCP about 360 vs 580). So
``AUTO`` picks per direction, by the source socket's protocol (:func:`mode_for`).

Pipes and buffers are taken from pools only while bytes are in flight and given back when the
direction is drained: an idle relayed connection holds neither (eager 1 MiB buffers cut the
connection rate, docs/kernel-facts.md).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import socket

from mpsim.live.sockets import F_SETPIPE_SZ, IPPROTO_MPTCP, SPLICE_F_MOVE, SPLICE_F_NONBLOCK

#: Errors that mean the peer of the socket reset or vanished (as opposed to a bug of ours).
RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.ECONNABORTED, errno.ENOTCONN})
_SPLICE_FLAGS = SPLICE_F_MOVE | SPLICE_F_NONBLOCK
#: Read/write rounds per pump() call, so that one fast connection cannot starve the others.
_ROUNDS_PER_CALL = 8


class RelayMode(enum.Enum):
    SPLICE = "splice"
    COPY = "copy"
    AUTO = "auto"  # splice from TCP sockets, copy from MPTCP ones


def mode_for(source: socket.socket, requested: RelayMode) -> RelayMode:
    """The mode of the direction that reads from ``source``."""
    if requested is not RelayMode.AUTO:
        return requested
    return RelayMode.COPY if source.proto == IPPROTO_MPTCP else RelayMode.SPLICE


class PipePool:
    """Non-blocking pipes, created on demand and kept (up to ``max_idle``) for reuse."""

    def __init__(self, pipe_bytes: int | None = None, max_idle: int = 64) -> None:
        self.pipe_bytes = pipe_bytes
        self.max_idle = max_idle
        self.created = 0
        self._idle: list[tuple[int, int]] = []

    def acquire(self) -> tuple[int, int]:
        if self._idle:
            return self._idle.pop()
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.pipe_bytes:
            fcntl.fcntl(write_fd, F_SETPIPE_SZ, self.pipe_bytes)
        self.created += 1
        return read_fd, write_fd

    def release(self, pipe: tuple[int, int], *, empty: bool) -> None:
        """Back to the pool; a pipe that still holds bytes (its relay was reset) is closed."""
        if empty and len(self._idle) < self.max_idle:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        while self._idle:
            read_fd, write_fd = self._idle.pop()
            os.close(read_fd)
            os.close(write_fd)


class BufferPool:
    """``chunk_bytes`` bytearrays, created on demand and kept (up to ``max_idle``) for reuse."""

    def __init__(self, chunk_bytes: int = 65536, max_idle: int = 64) -> None:
        self.chunk_bytes = chunk_bytes
        self.max_idle = max_idle
        self.created = 0
        self._idle: list[bytearray] = []

    def acquire(self) -> bytearray:
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return bytearray(self.chunk_bytes)

    def release(self, buffer: bytearray) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(buffer)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        self._idle.clear()


class PumpEvent(enum.Enum):
    SOURCE_EOF = "source_eof"  # the source sent FIN (reported once)
    SOURCE_RESET = "source_reset"  # reading failed: the source's peer reset
    DESTINATION_RESET = "destination_reset"  # writing failed: the destination's peer reset


class Pump:
    """One direction of a relay: ``prefix`` bytes first (what the session sent this way: the
    Convert reply, client bytes read with the request), then everything ``source`` delivers, then
    ``shutdown(SHUT_WR)`` on ``destination`` once the source's EOF is through and the driver has
    asked for it (:attr:`shutdown_when_drained`; the session decides the FIN coupling)."""

    def __init__(self, source: socket.socket, destination: socket.socket, mode: RelayMode, *,
                 pipes: PipePool, buffers: BufferPool, chunk_bytes: int = 65536) -> None:
        if mode is RelayMode.AUTO:
            raise ValueError("resolve AUTO with mode_for() first")
        self.source = source
        self.destination = destination
        self.mode = mode
        self.prefix = bytearray()
        self.source_eof = False
        self.shutdown_when_drained = False
        self.destination_shut = False
        self.failed = False
        self.relayed_bytes = 0  # source bytes delivered (prefix bytes not counted)
        self._pipes = pipes
        self._buffers = buffers
        self._chunk_bytes = chunk_bytes
        self._pipe: tuple[int, int] | None = None
        self._buffer: bytearray | None = None
        self._held = 0  # bytes in the pipe, or in the buffer from _buffer_start
        self._buffer_start = 0

    # --- what the event loop should wait for -------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.failed or self.destination_shut

    @property
    def wants_read(self) -> bool:
        return not (self.failed or self.source_eof or self.prefix or self._held)

    @property
    def wants_write(self) -> bool:
        return not self.finished and bool(self.prefix or self._held)

    # --- moving bytes --------------------------------------------------------------------------------

    def pump(self, read: bool = True) -> PumpEvent | None:
        """Move what can move without blocking (bounded rounds); the first event, if any.
        ``read=False``: only write what is held (the source is not read this time)."""
        if self.failed or self.destination_shut:
            return None
        try:
            for _ in range(_ROUNDS_PER_CALL):
                if not self._flush():
                    return None  # the destination is full: wait for it to drain
                if self.source_eof:
                    self._maybe_shutdown()
                    return None
                if not read:
                    return None
                got = self._fill()
                if got == 0:
                    self._give_back()  # idle: hold no pipe or buffer while waiting
                    if self.source_eof:
                        self._maybe_shutdown()
                        return PumpEvent.SOURCE_EOF
                    return None  # nothing to read now
                if got < self._chunk_bytes:
                    # A short read took all the source had: deliver it, and let the (level-triggered)
                    # readiness say when there is more, rather than a read that would find nothing.
                    self._flush()
                    return None
        except _SideReset as reset:
            self.fail()
            return reset.event
        return None

    @property
    def can_forward(self) -> bool:
        """:meth:`forward` applies: a copying direction that holds nothing and is still open."""
        return (self.mode is RelayMode.COPY and not (self.failed or self.source_eof or self.prefix or self._held)
                and not self.destination_shut)

    def forward(self) -> int | PumpEvent | None:
        """The common case of a readable source in one go (only when :attr:`can_forward`): one
        ``recv``, and one ``send`` of what it brought. A short request or answer (the setup
        benchmark's 100-byte echo) then costs two system calls and no pool, pipe or re-registration.

        Returns the number of bytes relayed when the pump is as before (all of them went through,
        or none were there: 0), None when it changed (the destination took only part: the rest is
        held in a pooled buffer and the destination must be watched), or the event :meth:`pump`
        would report (EOF, a reset). The same bytes, counts and events as :meth:`pump`; only the
        copies and calls differ."""
        try:
            data = self.source.recv(self._chunk_bytes)
        except BlockingIOError:
            return 0
        except OSError:
            self.fail()
            return PumpEvent.SOURCE_RESET
        if not data:
            self.source_eof = True
            try:
                self._maybe_shutdown()
            except _SideReset as reset:
                self.fail()
                return reset.event
            return PumpEvent.SOURCE_EOF
        try:
            sent = self.destination.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.fail()
            return PumpEvent.DESTINATION_RESET
        self.relayed_bytes += sent
        if sent == len(data):
            return sent
        rest = len(data) - sent
        self._buffer = self._buffers.acquire()
        self._buffer[:rest] = memoryview(data)[sent:]
        self._buffer_start = 0
        self._held = rest
        return None

    def request_shutdown(self) -> None:
        """The session closed this direction (FIN): send it once everything before it is through."""
        self.shutdown_when_drained = True
        if not self.failed:
            try:
                self._maybe_shutdown()
            except _SideReset:
                self.fail()

    def fail(self) -> None:
        """Stop for good (a side was reset); give back the pipe or buffer."""
        self.failed = True
        self._give_back()

    def _flush(self) -> bool:
        """Write the prefix, then what is held; True when nothing is left."""
        while self.prefix:
            sent = self._send_bytes(self.prefix)
            if sent == 0:
                return False
            del self.prefix[:sent]
        while self._held:
            if self.mode is RelayMode.SPLICE:
                assert self._pipe is not None
                moved = self._splice(self._pipe[0], self.destination.fileno(), self._held,
                                     PumpEvent.DESTINATION_RESET) or 0  # a destination never says None
            else:
                assert self._buffer is not None
                view = memoryview(self._buffer)[self._buffer_start:self._buffer_start + self._held]
                moved = self._send_bytes(view)
                self._buffer_start += moved
            if moved == 0:
                return False
            self._held -= moved
            self.relayed_bytes += moved
        self._give_back()
        return True

    def _fill(self) -> int:
        """Read once from the source; 0 at EOF (``source_eof`` set) or when nothing is there."""
        if self.mode is RelayMode.SPLICE:
            if self._pipe is None:
                self._pipe = self._pipes.acquire()
            got = self._splice(self.source.fileno(), self._pipe[1], self._chunk_bytes, PumpEvent.SOURCE_RESET)
        else:
            if self._buffer is None:
                self._buffer = self._buffers.acquire()
            try:
                got = self.source.recv_into(self._buffer)
            except BlockingIOError:
                return 0
            except OSError as err:
                raise _SideReset(PumpEvent.SOURCE_RESET, err) from None
            self._buffer_start = 0
            if got == 0:
                self.source_eof = True
        if got is None:
            return 0
        self._held = got
        return got

    def _splice(self, fd_in: int, fd_out: int, count: int, on_error: PumpEvent) -> int | None:
        """One splice; None when it would block, 0 at EOF of a socket source."""
        try:
            moved = os.splice(fd_in, fd_out, count, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return None if on_error is PumpEvent.SOURCE_RESET else 0
        except OSError as err:
            raise _SideReset(on_error, err) from None
        if moved == 0 and on_error is PumpEvent.SOURCE_RESET:
            self.source_eof = True
        return moved

    def _send_bytes(self, data) -> int:
        try:
            return self.destination.send(data)
        except BlockingIOError:
            return 0
        except OSError as err:
            raise _SideReset(PumpEvent.DESTINATION_RESET, err) from None

    def _maybe_shutdown(self) -> None:
        if self.shutdown_when_drained and not self.destination_shut and not self.prefix and not self._held:
            self.destination_shut = True
            self._give_back()
            try:
                self.destination.shutdown(socket.SHUT_WR)
            except OSError as err:
                if err.errno != errno.ENOTCONN:
                    raise _SideReset(PumpEvent.DESTINATION_RESET, err) from None

    def _give_back(self) -> None:
        if self._pipe is not None:
            self._pipes.release(self._pipe, empty=self._held == 0)
            self._pipe = None
        if self._buffer is not None:
            self._buffers.release(self._buffer)
            self._buffer = None
        if self.failed:
            self._held = 0


class _SideReset(Exception):
    """A socket error that ends the direction; ``event`` says which side it came from."""

    def __init__(self, event: PumpEvent, err: OSError) -> None:
        super().__init__(err)
        self.event = event
        self.errno = err.errno

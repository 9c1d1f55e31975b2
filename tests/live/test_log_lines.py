"""The daemon's log lines are queued and written at the end of each turn of its loop, in writes of
whole lines below PIPE_BUF (``--workers`` share one pipe, where such a write is never interleaved
with another process's). No sockets: the daemon is constructed, not started."""

import io
from ipaddress import IPv4Address

from mpsim.live.converter import _LOG_WRITE_BYTES, ConverterDaemon, ServeConfig


class _Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_lines_are_written_whole_in_writes_below_pipe_buf():
    stream = _Recorder()
    daemon = ConverterDaemon(ServeConfig(listen=((IPv4Address("127.0.0.1"), 0),), worker=3), log=stream)
    try:
        for conn in range(200):
            daemon._log("closed", conn=conn, msg="x" * (conn % 50), duration_s="0.001")
        daemon._log("long", msg="y" * 5000)  # longer than a write's budget: written alone
        daemon._log("last", conn=1)
        daemon._flush_log()
    finally:
        daemon._is_local.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 202 and all(line.endswith(" worker=3") for line in lines)
    assert [line.split()[1] for line in lines[-2:]] == ["event=long", "event=last"]
    assert len(stream.writes) > 2   # batched, not one write for everything
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write) <= _LOG_WRITE_BYTES or write.count("\n") == 1
    assert not daemon._log_lines   # nothing left queued

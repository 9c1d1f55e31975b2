"""The RFC 8803 converter and client on real Linux sockets, driving the same sans-I/O machines as
the simulator (:class:`mpsim.proto.convert.ConverterSession`, :class:`ConvertClientExchange`).

* :mod:`mpsim.live.converter`: the daemon; :mod:`mpsim.live.serve` its command line (``mpsim converter serve``);
* :mod:`mpsim.live.workers`: ``--workers N``, N daemons on SO_REUSEPORT listeners;
* :mod:`mpsim.live.cookies`: the cookie secret file, kept across restarts and rotated;
* :mod:`mpsim.live.client`: :func:`convert_connect` and ``mpsim converter connect`` (:func:`connect_main`);
* :mod:`mpsim.live.relay`: splice and copy relays with lazy pipe and buffer pools;
* :mod:`mpsim.live.sockets`: MPTCP/TFO constants, TCP_INFO and MPTCP_INFO, sysctl checks, the
  reconstruction of a server's SYN-ACK options, the local-destination check.

Usage, kernel settings and every deviation from RFC 8803 the socket API forces:
docs/live-converter.md.
"""

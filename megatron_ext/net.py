"""A free local TCP port, for rendezvous of single-node runs (launcher, benchmarks, tests)."""

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it); a small race until the caller binds it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""The supervisor's port reservation: its copies can bind the same port; port 0 picks a free one."""

from __future__ import annotations

import socket

from services.common.supervisor import hold_port


def test_a_held_port_accepts_listeners_that_reuse_it_and_refuses_others() -> None:
    holder, port = hold_port("127.0.0.1", 0)
    try:
        assert port > 0
        copy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        copy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        copy.bind(("127.0.0.1", port))
        copy.listen()
        copy.close()
        stranger = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            stranger.bind(("127.0.0.1", port))
            raised = False
        except OSError:
            raised = True
        finally:
            stranger.close()
        assert raised, "a process that does not reuse the port could take it from the supervisor's copies"
    finally:
        holder.close()

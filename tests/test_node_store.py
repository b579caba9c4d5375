"""The multi-node sweep's store, alone: where its key comes from, and messages that are
replayed or tampered with (a real server on loopback; no agents)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from experiments import node_store
from launch.bootstrap import free_port

KEY = b"test-sweep-key-0123456789abcdef0123456"


def test_the_key_comes_from_the_environment_or_from_a_private_file(tmp_path):
    assert node_store.sweep_key({"JITTERLAB_SWEEP_KEY": "k" * 32}) == b"k" * 32
    with pytest.raises(ValueError, match="at least 32 characters"):
        node_store.sweep_key({"JITTERLAB_SWEEP_KEY": "k" * 16})
    path = tmp_path / "key"
    path.write_text("from-a-file-0123456789abcdef0123456789\n")
    path.chmod(0o600)
    env = {"JITTERLAB_SWEEP_KEY_FILE": str(path)}
    assert node_store.sweep_key(env) == b"from-a-file-0123456789abcdef0123456789"
    path.write_bytes(bytes(range(200, 232)))  # 32 random-looking bytes: taken as hex
    assert node_store.sweep_key(env) == bytes(range(200, 232)).hex().encode()
    path.chmod(0o640)
    with pytest.raises(ValueError, match=f"sweep key: {path} can be read by other users "
                                         f"\\(mode 0640\\); make it private: chmod 600"):
        node_store.sweep_key(env)
    with pytest.raises(ValueError, match="sweep key: cannot read .*nothing \\(No such file"):
        node_store.sweep_key({"JITTERLAB_SWEEP_KEY_FILE": str(tmp_path / "nothing")})
    with pytest.raises(ValueError, match="sweep key: must be at least 32 characters, got 5"):
        node_store.sweep_key({"JITTERLAB_SWEEP_KEY": "short"})
    with pytest.raises(ValueError, match="sweep key: a multi-node sweep needs a secret"):
        node_store.sweep_key({})


def test_agents_started_together_get_a_fresh_key_unless_one_is_given():
    made = node_store.agents_env({"PATH": "/bin"})
    assert made["PATH"] == "/bin" and len(made["JITTERLAB_SWEEP_KEY"]) == 64
    assert made["JITTERLAB_SWEEP_KEY"] != node_store.agents_env({})["JITTERLAB_SWEEP_KEY"]
    given = {"JITTERLAB_SWEEP_KEY": "mine-0123456789abc"}
    assert node_store.agents_env(given) == given
    assert node_store.agents_env({"JITTERLAB_SWEEP_KEY_FILE": "/k"}) == {
        "JITTERLAB_SWEEP_KEY_FILE": "/k"}


def _frame(context: tuple[str, ...], body: dict) -> bytes:
    data = json.dumps(body).encode()
    mac = node_store._mac(KEY, context, data)
    return len(mac + data).to_bytes(4, "big") + mac + data


def _reply(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[:4], "big"):
            break
    return out


def test_a_replayed_request_fails_the_check_in_its_connection_and_in_another(capfd):
    """Someone who recorded a node's messages cannot send them again: request n is
    checked against n and the connection's nonces."""
    server = node_store.StoreServer("127.0.0.1", free_port(), KEY)
    where = server.address
    with socket.create_connection(where) as sock:
        client = os.urandom(16).hex()
        sock.sendall(_frame(("hello",), {"nonce": client}))
        welcome = _reply(sock)
        nonce = json.loads(welcome[4 + 32:])["nonce"]
        request = _frame(("request", nonce, client, "0"),
                         {"op": "add", "key": "claim/1", "value": 1})
        sock.sendall(request)
        assert json.loads(_reply(sock)[4 + 32:]) == {"value": 1}
        sock.sendall(request)  # again, as request 1
        assert _reply(sock) == b""  # dropped, the connection closed
    with socket.create_connection(where) as sock:
        sock.sendall(_frame(("hello",), {"nonce": client}))
        _reply(sock)
        sock.sendall(request)  # into a new connection: another nonce
        assert _reply(sock) == b""
    assert server.apply("get", "claim/1") == 1
    err = capfd.readouterr().err.splitlines()
    assert len([ln for ln in err if "fails the HMAC check" in ln]) == 2, err
    client = node_store.StoreClient(*where, KEY, timeout_s=5)  # still serving
    assert client.request("add", "claim/1", 1) == 2
    client.close()
    server.close()


def test_a_server_that_does_not_know_the_key_is_not_believed(capfd):
    """The other direction: a welcome that fails the check is dropped and logged, and the
    client gives up at its deadline with the reason, instead of talking to it."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def impostor() -> None:
        for _ in range(50):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                body = json.dumps({"nonce": "0" * 32}).encode()
                conn.sendall((32 + len(body)).to_bytes(4, "big") + b"\x01" * 32 + body)

    threading.Thread(target=impostor, daemon=True).start()
    with pytest.raises(ConnectionError, match="fails the HMAC check"):
        node_store.StoreClient(*listener.getsockname(), KEY, timeout_s=1)
    listener.close()
    assert "jitterlab: store: dropped a message from 127.0.0.1:" in capfd.readouterr().err


def test_a_trickling_or_crowding_client_cannot_hold_the_store():
    """A client that sends a frame header and then a byte at a time is cut off at the
    handshake deadline (not kept alive by each byte), and past max_connections new
    connections are closed at once while an agent with the key is still served."""
    import time

    server = node_store.StoreServer("127.0.0.1", free_port(), KEY, max_connections=4)
    host, port = server.address
    old = node_store.HANDSHAKE_S
    node_store.HANDSHAKE_S = 1.0
    socks = []
    try:
        slow = socket.create_connection((host, port))
        slow.sendall((500).to_bytes(4, "big"))
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:
            try:
                slow.sendall(b"x")
            except OSError:
                closed = True
                break
            slow.settimeout(0.3)
            try:
                if slow.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed and time.monotonic() - t0 < 3
        socks = [socket.create_connection((host, port)) for _ in range(4)]
        time.sleep(0.3)
        extra = socket.create_connection((host, port))
        extra.settimeout(2)
        assert extra.recv(1) == b""  # refused: closed without a word
        for s in socks:
            s.close()
        # Served once the crowd has gone (the client retries while the server still
        # counts their connections, at most its 10 s).
        client = node_store.StoreClient(host, port, KEY, 10.0)
        client.request("set", "k", "v")
        assert client.request("get", "k") == "v"
    finally:
        node_store.HANDSHAKE_S = old
        for s in socks:
            s.close()
        server.close()

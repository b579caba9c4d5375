"""The key-value store of a multi-node sweep: node 0's agent serves it, the others connect.

torch's TCPStore listens on every interface whatever host name it is given, and anyone who
reaches it may write any key; this store listens only on the address ``--master`` names,
and answers only the sweep's nodes. It is a threaded TCP server of the standard library
with the three operations the agents use: set (a JSON text), get, and add (a counter).

The sweep's key is a secret every node is given (``sweep_key``). Every message, in both
directions, carries an HMAC-SHA256 under that key over where it stands in its connection
and its whole body (the operation, the store key's name, the value)::

    frame     length (4 bytes, big-endian), HMAC (32 bytes), body (JSON object)
    client    hello    {"nonce": c}             HMAC over "hello", body
    server    welcome  {"nonce": s}             HMAC over "welcome", c, body
    client    request  {"op", "key", "value"}   HMAC over "request", s, c, n, body
    server    reply    {"value"} or {"error"}   HMAC over "reply", s, c, n, body

``n`` counts the requests of one connection from 0, and ``s`` is new for each connection,
so a recorded message replayed, reordered or moved to another connection fails the check.
A message that fails it, or does not parse, is dropped and logged (one line on stderr),
and the connection closed; the server goes on serving everyone else. A client with
another key is told so (an unauthenticated "refused"), so it stops with that reason
instead of retrying until its join timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from jitter_models.errors import BadInput

MAX_HELLO_BYTES = 1024   # a real hello is about 100 bytes
KEY_ENV = "JITTERLAB_SWEEP_KEY"
KEY_FILE_ENV = "JITTERLAB_SWEEP_KEY_FILE"
MIN_KEY_CHARS = 32  # e.g. 128 bits in hex: one recorded frame lets guesses be tested offline
MAX_FRAME_BYTES = 1 << 20
HANDSHAKE_S = 10.0        # an unauthenticated connection is closed after this long
_MAC_BYTES = 32
_REFUSED = b'{"refused": "not this sweep\'s key"}'
_MAX_LOG_LINES_PER_S = 20  # a flood of bad messages must not flood the log


class KeyRefused(Exception):
    """The server at the address does not know this node's key."""


class _Bad(Exception):
    """A message that fails the check or does not parse; its text says which."""


def sweep_key(env: Mapping[str, str] | None = None) -> bytes:
    """The sweep's secret: $JITTERLAB_SWEEP_KEY, else the contents of the file named by
    $JITTERLAB_SWEEP_KEY_FILE (mode 0600 or stricter); ValueError when neither is set."""
    env = os.environ if env is None else env
    text = env.get(KEY_ENV, "")
    if not text and env.get(KEY_FILE_ENV):
        path = env[KEY_FILE_ENV]
        try:  # no FIFO, no link; the mode checked on what was opened
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise BadInput(f"sweep key: cannot read {path} ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            mode = st.st_mode & 0o777
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise BadInput(f"sweep key: {path} is not a regular file of this user")
            if mode & 0o077:
                raise BadInput(f"sweep key: {path} can be read by other users (mode "
                                 f"{mode:04o}); make it private: chmod 600 {path}")
            raw = f.read(4096).strip()
        text = raw.hex() if len(raw) >= 16 and not raw.isascii() else raw.decode("ascii",
                                                                               "replace")
    if not text:
        raise BadInput(f"sweep key: a multi-node sweep needs a secret only its nodes "
                         f"know: set {KEY_ENV} to the same value on every node (e.g. "
                         f"export {KEY_ENV}=$(openssl rand -hex 32)), or {KEY_FILE_ENV} "
                         "to a file of mode 0600")
    if len(text) < MIN_KEY_CHARS:
        raise BadInput(f"sweep key: must be at least {MIN_KEY_CHARS} characters, got "
                         f"{len(text)}")
    return text.encode()


def agents_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to start a sweep's agents in (one srun step): this one, with a
    fresh key when none is set, so that only those agents know it."""
    env = dict(os.environ if env is None else env)
    if not env.get(KEY_ENV) and not env.get(KEY_FILE_ENV):
        env[KEY_ENV] = secrets.token_hex(32)
    return env


_log_second = [0.0, 0]  # when the current second began, lines logged in it
_log_lock = threading.Lock()


def log_dropped(peer: Any, why: str) -> None:
    """One line on stderr for a message dropped (a flood: the first few each second)."""
    with _log_lock:
        now = time.monotonic()
        if now - _log_second[0] > 1.0:
            _log_second[:] = [now, 0]
        _log_second[1] += 1
        if _log_second[1] > _MAX_LOG_LINES_PER_S:
            return
    where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
    print(f"jitterlab: store: dropped a message from {where}: {why}", file=sys.stderr,
          flush=True)


# ------------------------------------------------------------------ frames

def _mac(key: bytes, context: tuple[str, ...], body: bytes) -> bytes:
    return hmac.new(key, "|".join(context).encode() + b"|" + body, hashlib.sha256).digest()


def _send(sock: socket.socket, key: bytes, context: tuple[str, ...], value: dict) -> None:
    body = json.dumps(value).encode()
    frame = _mac(key, context, body) + body
    sock.sendall(len(frame).to_bytes(4, "big") + frame)


def _recv_frame(sock: socket.socket, max_bytes: int = 0) -> tuple[bytes, bytes] | None:
    """(HMAC, body) of the next frame; None when the peer closed before sending one."""
    head = _exactly(sock, 4, eof_ok=True)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if not _MAC_BYTES <= n <= (max_bytes or MAX_FRAME_BYTES):
        raise _Bad(f"a frame of {n} bytes")
    data = _exactly(sock, n, eof_ok=False)
    return data[:_MAC_BYTES], data[_MAC_BYTES:]


def _open(key: bytes, context: tuple[str, ...], frame: tuple[bytes, bytes]) -> dict:
    """The body of a frame that passes the check (checked before it is parsed)."""
    mac, body = frame
    if not hmac.compare_digest(mac, _mac(key, context, body)):
        raise _Bad("it fails the HMAC check (not this sweep's key, or replayed)")
    try:
        value = json.loads(body)
    except ValueError:
        raise _Bad("its body does not parse") from None
    if not isinstance(value, dict):
        raise _Bad("its body is not a JSON object")
    return value


def _exactly(sock: socket.socket, n: int, eof_ok: bool) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if eof_ok and not buf:
                return None
            raise _Bad(f"the connection closed inside a frame ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


# ------------------------------------------------------------------ server

class StoreServer:
    """Node 0's store, listening on ``host``'s address only; ``apply`` serves node 0 itself
    (in this process, no messages)."""

    def __init__(self, host: str, port: int, key: bytes, *, max_connections: int = 64):
        """``max_connections``: at once (a thread each); each node holds two, and the
        rest is room for reconnects. Anyone who reaches the address may connect, and must
        not exhaust threads or memory before authenticating."""
        self.key = key
        self.max_connections = max_connections
        self._values: dict[str, str | int] = {}
        self._lock = threading.Lock()
        error: OSError = OSError(f"{host} has no address")
        for family, _, _, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            try:
                self._tcp = _TCPServer(addr, family, self)
                break
            except OSError as exc:
                error = exc
        else:
            raise error
        threading.Thread(target=self._tcp.serve_forever, name="jitterlab-store",
                         daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        return self._tcp.server_address[:2]

    def apply(self, op: str, name: str, value: Any = None) -> Any:
        with self._lock:
            if op == "get":
                return self._values.get(name)
            if op == "set" and isinstance(value, str):
                self._values[name] = value
                return None
            old = self._values.get(name, 0)
            if op == "add" and type(value) is int and type(old) is int:
                self._values[name] = old + value
                return old + value
        raise ValueError(f"cannot {op} {name!r} with {value!r:.40}")

    def close(self) -> None:
        self._tcp.shutdown()
        self._tcp.server_close()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a burst of connections must not keep the nodes out

    def __init__(self, addr: tuple, family: int, store: StoreServer):
        self.address_family = family
        self.store = store
        self._slots = threading.BoundedSemaphore(store.max_connections)
        super().__init__(addr, _Connection)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # see StoreServer's max_connections
            log_dropped(client_address, f"over {self.store.max_connections} connections "
                                        "at once")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log_dropped(client_address, repr(sys.exc_info()[1]))  # never a traceback


class _Connection(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        key, sock = self.server.store.key, self.request
        sock.settimeout(HANDSHAKE_S)
        # The whole handshake within HANDSHAKE_S (a timeout per recv would let a client
        # that trickles a byte at a time hold the connection forever).
        deadline = threading.Timer(HANDSHAKE_S, _shut, (sock,))
        deadline.daemon = True
        deadline.start()
        try:
            frame = _recv_frame(sock, max_bytes=MAX_HELLO_BYTES)
            if frame is None:
                return
            try:
                client = _nonce(_open(key, ("hello",), frame))
            except _Bad as exc:
                log_dropped(self.client_address, str(exc))
                refused = _MAC_BYTES * b"\0" + _REFUSED
                sock.sendall(len(refused).to_bytes(4, "big") + refused)
                return
            deadline.cancel()
            nonce = secrets.token_hex(16)
            _send(sock, key, ("welcome", client), {"nonce": nonce})
            n = 0
            while (frame := _recv_frame(sock)) is not None:
                context = (nonce, client, str(n))
                request = _open(key, ("request", *context), frame)
                sock.settimeout(None)  # one of the sweep's nodes: it may wait between calls
                try:
                    reply = {"value": self.server.store.apply(
                        request.get("op"), str(request.get("key")), request.get("value"))}
                except ValueError as exc:
                    reply = {"error": str(exc)}
                _send(sock, key, ("reply", *context), reply)
                n += 1
        except _Bad as exc:
            log_dropped(self.client_address, str(exc))
        except OSError:
            pass  # the peer went away, or stayed silent through the handshake
        finally:
            deadline.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _nonce(hello: dict) -> str:
    nonce = hello.get("nonce")
    if not (isinstance(nonce, str) and len(nonce) == 32 and
            all(c in "0123456789abcdef" for c in nonce)):
        raise _Bad("its hello carries no nonce")
    return nonce


# ------------------------------------------------------------------ client

class StoreClient:
    """One connection to node 0's store; connecting waits up to ``timeout_s`` for node 0
    to listen. OSError (ConnectionError) when the connection is lost, KeyRefused when
    node 0 has another key."""

    RECONNECT_S = 10.0
    REQUEST_S = 60.0      # node 0 answers at once; this long silent, it is gone

    def __init__(self, host: str, port: int, key: bytes, timeout_s: float):
        self.where, self.key, self.timeout_s = (host, port), key, timeout_s
        self._connect(time.monotonic() + timeout_s)

    def _connect(self, deadline: float) -> None:
        while True:
            sock = None
            try:
                sock = socket.create_connection(self.where, timeout=min(self.timeout_s, 30))
                client = secrets.token_hex(16)
                _send(sock, self.key, ("hello",), {"nonce": client})
                frame = _recv_frame(sock)
                if frame is None:
                    raise ConnectionError("node 0 closed the connection")
                if frame == (_MAC_BYTES * b"\0", _REFUSED):
                    sock.close()
                    raise KeyRefused()
                self._context = (_nonce(_open(self.key, ("welcome", client), frame)), client)
                sock.settimeout(self.REQUEST_S)
                self._sock, self._n = sock, 0
                return
            except (OSError, _Bad) as exc:
                if sock is not None:
                    sock.close()
                if isinstance(exc, _Bad):
                    log_dropped(self.where, str(exc))
                if time.monotonic() > deadline:
                    raise ConnectionError(str(exc) or type(exc).__name__) from None
                time.sleep(0.2)

    def request(self, op: str, name: str, value: Any = None) -> Any:
        # A reply that fails the check is dropped and the request asked again on a new
        # connection (only someone tampering in between makes that happen; an add may
        # then count twice).
        for _ in range(3):
            context = (*self._context, str(self._n))
            _send(self._sock, self.key, ("request", *context),
                  {"op": op, "key": name, "value": value})
            try:
                frame = _recv_frame(self._sock)
                if frame is None:
                    raise ConnectionError("node 0 closed the connection")
                reply = _open(self.key, ("reply", *context), frame)
            except _Bad as exc:
                log_dropped(self.where, str(exc))
                self.close()
                self._connect(time.monotonic() + self.RECONNECT_S)
                continue
            self._n += 1
            if "error" in reply:
                raise RuntimeError(f"node 0's store: {reply['error']}")
            return reply.get("value")
        raise ConnectionError("node 0's replies keep failing the check")

    def close(self) -> None:
        self._sock.close()

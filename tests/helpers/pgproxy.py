"""A TCP proxy in front of PostgreSQL that can make the database unreachable on cue."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from urllib.parse import urlsplit


def via(url: str, port: int) -> str:
    """The same database URL through the proxy on 127.0.0.1:`port`, in plain text (the
    proxy reads the client's messages to find its cue)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    query = f"{parts.query}&sslmode=disable" if parts.query else "sslmode=disable"
    return parts._replace(netloc=netloc, query=query).geturl()


class PgProxy:
    """Forwards each connection to the real server until it goes dark: then every
    connection is cut and new ones are closed at once (`mode="refuse"`: a server that is
    down) or accepted and never answered (`mode="hang"`: a route that drops packets).
    `cut_on(marker)` goes dark by itself when a client sends bytes containing `marker`;
    `drop_on(marker)` only closes the connection that sent them, each time."""

    def __init__(self, url: str) -> None:
        target = urlsplit(url)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # closing it does not wake a thread blocked in accept
        self.port = self.listener.getsockname()[1]
        self.dark = threading.Event()
        self.mode = "refuse"
        self.marker: bytes | None = None
        self.cuts = 0  # how many times a marker was seen
        self.dropping: bytes | None = None  # a connection sending this is closed; no outage
        self.dropped = 0
        self.counting: bytes | None = None  # client messages holding this are counted
        self.counted = 0
        self.refused = 0  # connections turned away while dark
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []  # hung connections, closed when it comes back
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pgproxy", daemon=True)

    def url(self, url: str) -> str:
        return via(url, self.port)

    def __enter__(self) -> PgProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        self.go_dark()
        self.come_back()  # closes the connections held in "hang"

    def cut_on(self, marker: bytes, mode: str = "refuse") -> None:
        self.marker, self.mode = marker, mode

    def drop_on(self, marker: bytes | None) -> None:
        self.dropping = marker

    def go_dark(self, mode: str = "refuse") -> None:
        self.mode = mode
        self.dark.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def come_back(self) -> None:
        self.marker = None
        self.dark.clear()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.dark.is_set():
                self.refused += 1
                if self.mode == "hang":
                    with self._lock:
                        self._held.append(client)
                else:
                    client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 1.0)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if sock is client and self.counting is not None and self.counting in data:
                        self.counted += 1
                    if sock is client and self.dropping is not None and self.dropping in data:
                        self.dropped += 1
                        return  # that statement never runs; every other one does
                    if sock is client and self.marker is not None and self.marker in data:
                        self.cuts += 1
                        self.go_dark(self.mode)  # the message never reaches the server
                        return
                    (server if sock is client else client).sendall(data)
        except (OSError, ValueError):  # closed by the other side, or by go_dark
            pass
        finally:
            with self._lock:
                if (client, server) in self._pairs:
                    self._pairs.remove((client, server))
            client.close()
            server.close()

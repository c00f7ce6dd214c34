"""A TCP proxy on 127.0.0.1 that cuts its first connections after a number of response bytes: a dropped
network connection in the middle of a response, for the stream-resume tests."""

from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forwards to 127.0.0.1:`target_port`; each of the first `cuts` connections is closed (both sides) once
    `cut_after_bytes` bytes of the response went through. Later connections pass untouched."""

    def __init__(self, target_port: int, *, cut_after_bytes: int, cuts: int) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.cuts_left = cuts
        self.cut_done = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self.cuts_left > 0
                self.cuts_left -= int(cut)
            threading.Thread(target=self._serve, args=(downstream, cut), daemon=True).start()

    def _serve(self, downstream: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
        sent = 0
        try:
            while chunk := upstream.recv(1024):
                if cut and sent + len(chunk) >= self.cut_after_bytes:
                    downstream.sendall(chunk[: self.cut_after_bytes - sent])
                    with self._lock:
                        self.cut_done += 1
                    return
                downstream.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for s in (downstream, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass

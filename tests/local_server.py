"""A tiny HTTP server on 127.0.0.1 for download tests: fixed bytes per path, requests counted."""

from __future__ import annotations

import http.server
import threading


class LocalServer:
    """Serves ``files`` ({path: bytes}) on a free loopback port until ``close()``; 404 otherwise."""

    def __init__(self, files: dict[str, bytes]) -> None:
        served: list[str] = []
        self.requests = served

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                served.append(self.path)
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

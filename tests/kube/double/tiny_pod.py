"""A stand-in container for tests: serves HTTP on 127.0.0.1:$PORT with the standard library only.

GET /readyz answers 200 while ready (POST /unready and POST /ready flip it); GET / answers with the pod's
name and port as JSON, so a test can tell which pod served it. It exits promptly on SIGTERM.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

state = {"ready": os.environ.get("TINY_POD_READY", "1") == "1"}


class Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # headers and body go out in two writes: don't wait on delayed ACKs

    def do_GET(self) -> None:
        if self.path == "/readyz":
            self._reply(200 if state["ready"] else 503, {"ready": state["ready"]})
        else:
            self._reply(200, {"pod": os.environ.get("POD_NAME", ""), "port": int(os.environ["PORT"])})

    def do_POST(self) -> None:
        state["ready"] = self.path == "/ready"
        self._reply(200, {"ready": state["ready"]})

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(format % args + "\n")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"tiny pod listening on 127.0.0.1:{os.environ['PORT']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

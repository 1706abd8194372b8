#!/usr/bin/python3
"""A stand-in for a POTHEAD worker (0.10.6) built on the HTTP stack the real
one serves jobs with: werkzeug's WSGIRequestHandler (Debian's
python3-werkzeug, 2.2.2) on Python 3.11.

It behaves on the wire as ../shared/POTHEAD-WIRE.md records of the real
worker: each slot dials the hub's worker port over plain TCP, sets TCP
keepalive (idle 1 s, interval 2 s, 3 probes), writes nothing, waits with no
timeout for one request, answers it (werkzeug adds `Connection: close`),
shuts the socket down and dials again. The app is the bench's: /tiny is
1 KiB, /job?ms=N sleeps N ms, and POST /upload answers the body's length
and SHA-256 in hex, each with a Content-Length, as a Flask view returning
bytes would send; /chunked answers 3 pieces without one, so werkzeug
chunks them.

Usage: werkzeugworker.py --hub HOST:PORT [--slots N]
"""

import argparse
import hashlib
import logging
import socket
import sys
import threading
import time
import urllib.parse

from werkzeug.serving import WSGIRequestHandler

TINY = bytes(ord("a") + i % 26 for i in range(1024))


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/tiny":
        body = TINY
    elif path == "/upload":
        h = hashlib.sha256()
        n = 0
        stream = environ["wsgi.input"]
        # The hub sends a body with a Content-Length or chunked; werkzeug
        # undoes the chunking and then gives no length.
        left = int(environ.get("CONTENT_LENGTH") or -1)
        while left != 0:
            piece = stream.read(65536 if left < 0 else min(left, 65536))
            if not piece:
                break
            h.update(piece)
            n += len(piece)
            if left > 0:
                left -= len(piece)
        body = f"{n} {h.hexdigest()}\n".encode()
    elif path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one ", b"two ", b"three\n"]
    elif path == "/job":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            ms = float(query.get("ms", ["0"])[0])
        except ValueError:
            ms = -1
        if ms < 0:
            body = b"bad ms\n"
            start_response("400 BAD REQUEST", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        time.sleep(ms / 1000)
        body = b"done\n"
    else:
        body = b"not found\n"
        start_response("404 NOT FOUND", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class Server:
    """What WSGIRequestHandler asks of its server."""

    def __init__(self, address):
        self.app = app
        self.ssl_context = None
        self.multithread = True
        self.multiprocess = False
        self.passthrough_errors = False
        self.server_address = address

    def log(self, type, message, *args):
        print(f"{type}: {message % args if args else message}", file=sys.stderr, flush=True)


class Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_request(self, code="-", size="-"):
        pass  # a log line per job would cost the worker, not the hub


def slot(host, port):
    server = Server((host, port))
    while True:
        try:
            sock = socket.create_connection((host, port))
        except OSError:
            time.sleep(0.1)
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        try:
            Handler(sock, sock.getpeername(), server)
        except Exception as e:  # a slot that stopped would shrink the pool unseen
            print(f"slot: {e!r}", file=sys.stderr, flush=True)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hub", required=True, help="HOST:PORT of the hub's worker port")
    ap.add_argument("--slots", type=int, default=8, help="connections held, one job each")
    args = ap.parse_args()
    host, _, port = args.hub.rpartition(":")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    threads = [threading.Thread(target=slot, args=(host, int(port)), daemon=True) for _ in range(args.slots)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""payments-api: the payment provider the order example's `payment-charge`
step calls over HTTP. A small real service (Python's standard library only),
shaped like the APIs it stands for:

- `POST /v1/charges` with `Authorization: Bearer KEY` (401 without the key)
  and a JSON body `{"order_id", "customer", "amount_cents"}` answers 201 with
  `{"id": "ch_N", ...}`. A declined card (customer "mallory") answers 402.
- `Idempotency-Key` is honoured: a request with a key seen before is not
  charged again; the stored charge is answered with 200 and
  `Idempotent-Replayed: true`. (Troupe puts the same key on every redelivery
  of an event, so a redelivered order is charged once.)
- `POST /v1/refunds` with `{"charge_id", "amount_cents"}` pays a charge
  back: 201 with `{"id": "re_N", ...}`; 404 for a charge it never made; a
  charge is refunded once (a second refund of it, under another key, is
  answered with the first and `Idempotent-Replayed: true`). The same
  `Idempotency-Key` rules as charges.
- `GET /v1/charges` (key required) lists the charges, `GET /v1/refunds` the
  refunds.
- `GET /stats` counts requests, charges, refunds and replays (no key: it
  holds none).
- `POST /control` tells it to misbehave, for demos and tests:
  `{"fail": N}` answers the next N charges 503 without charging;
  `{"fail_after_charge": N}` charges the next N, then answers 503 as if the
  answer were lost on the way; `{"delay_ms": M}` makes every charge slow.

    python3 server.py [--port 8471] [--key-file dev.key]

It prints `payments-api listening on http://HOST:PORT` once it serves
(`--port 0` picks a free port). Charges live in memory.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Ledger:
    def __init__(self):
        self.lock = threading.Lock()
        self.charges = []
        self.refunds = []
        self.refunded = {}
        self.by_key = {}
        self.requests = 0
        self.replays = 0
        self.fail = 0
        self.fail_after_charge = 0
        self.delay_ms = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Troupe reuses connections
    # The head and the body of an answer are written apart: with Nagle's
    # algorithm on, the body waited for the client's delayed ACK of the
    # head, ~40 ms per answer on a kept-alive connection.
    disable_nagle_algorithm = True
    server_version = "payments-api/1.0"

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("payments-api: " + (fmt % args) + "\n")

    def answer(self, status, body, headers=()):
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            raw = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def authorised(self):
        if self.headers.get("authorization") == f"Bearer {self.server.key}":
            return True
        self.answer(401, {"error": "a valid API key is required (Authorization: Bearer ...)"})
        return False

    def do_GET(self):
        ledger = self.server.ledger
        if self.path == "/stats":
            with ledger.lock:
                stats = {
                    "requests": ledger.requests,
                    "charges": len(ledger.charges),
                    "refunds": len(ledger.refunds),
                    "replays": ledger.replays,
                }
            return self.answer(200, stats)
        if self.path == "/v1/charges":
            if not self.authorised():
                return
            with ledger.lock:
                return self.answer(200, {"charges": list(ledger.charges)})
        if self.path == "/v1/refunds":
            if not self.authorised():
                return
            with ledger.lock:
                return self.answer(200, {"refunds": list(ledger.refunds)})
        self.answer(404, {"error": f"no {self.path}"})

    def do_POST(self):
        ledger = self.server.ledger
        req = self.body()  # read whole before any answer: the connection is kept
        if self.path == "/control":
            told = req if isinstance(req, dict) else {}
            with ledger.lock:
                for k in ("fail", "fail_after_charge", "delay_ms"):
                    if k in told:
                        setattr(ledger, k, int(told[k]))
            return self.answer(200, {"ok": True})
        if self.path == "/v1/refunds":
            return self.refund(req)
        if self.path != "/v1/charges":
            return self.answer(404, {"error": f"no {self.path}"})
        with ledger.lock:
            ledger.requests += 1
            delay = ledger.delay_ms
        if not self.authorised():
            return
        if delay:
            time.sleep(delay / 1000)
        if not isinstance(req, dict) or not isinstance(req.get("amount_cents"), int) or req["amount_cents"] < 0:
            return self.answer(400, {"error": "body must be JSON with a non-negative integer amount_cents"})
        key = self.headers.get("idempotency-key")
        with ledger.lock:
            if self.answered_before(key):
                return
            if req.get("customer") == "mallory":
                return self.answer(402, {"error": "card declined"})
            charge = {
                "id": f"ch_{len(ledger.charges) + 1}",
                "order_id": req.get("order_id"),
                "customer": req.get("customer"),
                "amount_cents": req["amount_cents"],
                # The caller's W3C trace context, as a provider's logs keep it.
                "traceparent": self.headers.get("traceparent"),
            }
            ledger.charges.append(charge)
            if key:
                ledger.by_key[key] = charge
            lost = ledger.fail_after_charge > 0
            if lost:
                ledger.fail_after_charge -= 1
        if lost:
            return self.answer(503, {"error": "the answer was lost on the way (the charge was made)"})
        self.answer(201, charge)


    def answered_before(self, key):
        """With the ledger locked: answer a request whose key was seen (the
        stored answer, replayed) or one told to fail (503); whether it did."""
        ledger = self.server.ledger
        if key and key in ledger.by_key:
            ledger.replays += 1
            self.answer(200, ledger.by_key[key], [("idempotent-replayed", "true")])
            return True
        if ledger.fail > 0:
            ledger.fail -= 1
            self.answer(503, {"error": "the provider is unavailable; try again"})
            return True
        return False

    def refund(self, req):
        ledger = self.server.ledger
        with ledger.lock:
            ledger.requests += 1
        if not self.authorised():
            return
        if not isinstance(req, dict) or not isinstance(req.get("charge_id"), str):
            return self.answer(400, {"error": "body must be JSON with a charge_id"})
        key = self.headers.get("idempotency-key")
        with ledger.lock:
            if self.answered_before(key):
                return
            charge = next((c for c in ledger.charges if c["id"] == req["charge_id"]), None)
            if charge is None:
                return self.answer(404, {"error": f"no charge {req['charge_id']}"})
            done = ledger.refunded.get(charge["id"])
            if done is not None:
                ledger.replays += 1
                return self.answer(200, done, [("idempotent-replayed", "true")])
            refund = {
                "id": f"re_{len(ledger.refunds) + 1}",
                "charge_id": charge["id"],
                "order_id": charge["order_id"],
                "amount_cents": charge["amount_cents"],
            }
            ledger.refunds.append(refund)
            ledger.refunded[charge["id"]] = refund
            if key:
                ledger.by_key[key] = refund
        self.answer(201, refund)


def main():
    p = argparse.ArgumentParser(description="The order example's payment provider")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8471)
    p.add_argument("--key-file", default=str(HERE / "dev.key"))
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    a = p.parse_args()
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    server.key = Path(a.key_file).read_text().rstrip("\n")
    server.ledger = Ledger()
    server.verbose = a.verbose
    host, port = server.server_address[:2]
    print(f"payments-api listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

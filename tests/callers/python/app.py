"""caller, in Python: makes the HTTP calls a `test.call` event lists and
reports what each got in `test.called` (the protocol of the Rust fixture
tests/guests/caller), through `troupe_http`."""

import json

import troupe_http
import wit_world
from wit_world.imports.troupe_step_types import Contract, Emit, EventContract

ANY = json.dumps({"type": "object"})


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="caller",
            version="1.0.0",
            description="Makes HTTP calls and reports what it saw",
            consumes=[EventContract("test.call", "1.0.0", ANY, "The calls to make")],
            produces=[EventContract("test.called", "1.0.0", ANY, "What each call got")],
            deterministic=False,
        )

    def handle(self, event) -> list[Emit]:
        calls = json.loads(bytes(event.data))["calls"]
        results = []
        for c in calls:
            headers = list((c.get("headers") or {}).items())
            try:
                res = troupe_http.request(
                    c.get("method", "GET"), c["url"], headers, (c.get("body") or "").encode()
                )
                results.append({
                    "status": res.status,
                    "headers": [[k, v.decode("utf-8", "replace")] for k, v in res.headers],
                    "body": res.body.decode("utf-8", "replace"),
                })
            except troupe_http.Denied as e:
                results.append({"error": str(e)})
            except troupe_http.HttpError as e:
                results.append({"error": f"failed: {e}"})
        report = {"results": results, "attempt": event.attempt}
        return [Emit("test.called", None, None, json.dumps(report).encode())]

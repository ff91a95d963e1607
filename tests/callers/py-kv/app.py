"""keeper, in Python: does to its buckets what a `test.kv` event asks and
reports what each op returned in `test.kv.done` (the protocol of the Rust
fixture tests/guests/keeper: the part under its ROLE, ops get, set,
delete, exists, keys, incr, open; `then` retry or reject), through
`troupe_kv`."""

import json
import os

import troupe_kv
import wit_world
from componentize_py_types import Err
from wit_world.imports.troupe_step_types import (
    Contract, Emit, EventContract, StepError_Reject, StepError_Retry,
)

ANY = json.dumps({"type": "object"})


def run(op):
    b = troupe_kv.Bucket.open(op.get("bucket", ""))
    key = op.get("key", "")
    kind = op.get("op")
    if kind == "open":
        return True
    if kind == "get":
        v = b.get(key)
        return None if v is None else bytes(v).decode()
    if kind == "set":
        b.set(key, op.get("value", ""))
        return True
    if kind == "delete":
        b.delete(key)
        return True
    if kind == "exists":
        return b.exists(key)
    if kind == "keys":
        return b.keys()
    if kind == "incr":
        return b.increment(key, op.get("delta", 1))
    raise ValueError(f"unknown op {kind!r}")


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="keeper",
            version="1.0.0",
            description="Reads and writes its buckets as asked",
            consumes=[EventContract("test.kv", "1.0.0", ANY, "Operations on buckets, by role")],
            produces=[EventContract("test.kv.done", "1.0.0", ANY, "What each operation returned")],
            deterministic=False,
        )

    def handle(self, event) -> list[Emit]:
        role = os.environ.get("ROLE", "main")
        part = json.loads(bytes(event.data)).get(role)
        if part is None:
            return []
        results = []
        for op in part.get("ops", []):
            try:
                results.append({"ok": run(op)})
            except troupe_kv.KvError as e:
                results.append({"error": str(e)})
        then = part.get("then", "ok")
        if then == "retry":
            raise Err(StepError_Retry("asked to retry"))
        if then == "reject":
            raise Err(StepError_Reject("asked to reject"))
        report = {"role": role, "attempt": event.attempt, "results": results}
        return [Emit("test.kv.done", None, None, json.dumps(report).encode())]

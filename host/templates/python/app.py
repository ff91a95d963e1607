"""{{name}}: a Troupe step.

Consumes `{{name}}.requested` and emits `{{name}}.done`. Change the contract
in `describe` and the work in `handle`; build with `troupe build .` and
check with `troupe conformance <component>`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Contract, Emit, EventContract, StepError_Reject

REQUESTED = {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}}
DONE = {"type": "object", "required": ["id", "ok"], "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"}}}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="{{name}}",
            version="0.1.0",
            description="What {{name}} does",
            consumes=[EventContract("{{name}}.requested", "1.0.0", json.dumps(REQUESTED), "Someone asked for {{name}}")],
            produces=[EventContract("{{name}}.done", "1.0.0", json.dumps(DONE), "{{name}} did its work")],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        try:
            request = json.loads(bytes(event.data).decode("utf-8"))
            request_id = request["id"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(StepError_Reject(f"data is not what this step reads: {e!r}"))
        host.log(host.Level.INFO, f"handling {request_id}")
        done = {"id": request_id, "ok": True}
        return [Emit("{{name}}.done", request_id, None, json.dumps(done).encode())]

"""Promises `test.result` with a required `total`, then leaves it out."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Contract, Emit, EventContract, StepError_Reject

RESULT = {"type": "object", "required": ["total"], "properties": {"total": {"type": "integer"}}}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="emits-invalid",
            version="1.0.0",
            description="Breaks its output schema",
            consumes=[EventContract("test.work", "1.0.0", json.dumps({"type": "object"}), "Work")],
            produces=[EventContract("test.result", "1.0.0", json.dumps(RESULT), "A total")],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        try:
            json.loads(bytes(event.data).decode("utf-8"))
        except ValueError as e:
            raise Err(StepError_Reject(str(e)))
        return [Emit("test.result", None, None, json.dumps({"sum": 3}).encode())]

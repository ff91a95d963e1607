"""Declares its version as "1.0": not semver, so the contract is refused."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Contract, Emit, EventContract, StepError_Reject


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="bad-contract",
            version="1.0",
            description="A sloppy contract",
            consumes=[EventContract("test.work", "1.0.0", json.dumps({"type": "object"}), "Work")],
            produces=[],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        try:
            json.loads(bytes(event.data).decode("utf-8"))
        except ValueError as e:
            raise Err(StepError_Reject(str(e)))
        return []

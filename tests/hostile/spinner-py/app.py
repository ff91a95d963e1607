"""A hostile Python step: spins forever on every `test.spin`."""

import wit_world
from wit_world.imports.types import Contract, Emit, EventContract


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="spinner-py",
            version="1.0.0",
            description="Loops forever",
            consumes=[EventContract("test.spin", "1.0.0", "{}", "Anything")],
            produces=[],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        n = 0
        while True:
            n += 1

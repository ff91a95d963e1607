"""shipping-dispatch, in Python: hands a paid order to a carrier.

The same step as plugins/shipping-dispatch (Rust), shipping-dispatch-js and
shipping-dispatch-c: consumes `payment.charged`, emits `order.shipped` with a
tracking number derived from the order id (so every language, and every
redelivery, gives the same answer).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Contract, Emit, EventContract, StepError_Reject

CONSUMES = {
    "type": "object",
    "required": ["order_id", "customer"],
    "properties": {"order_id": {"type": "string"}, "customer": {"type": "string"}},
}
PRODUCES = {
    "type": "object",
    "required": ["order_id", "customer", "carrier", "tracking"],
    "properties": {
        "order_id": {"type": "string"},
        "customer": {"type": "string"},
        "carrier": {"type": "string"},
        "tracking": {"type": "string"},
    },
}


def fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="shipping-dispatch",
            version="1.0.0",
            description="Hands a paid order to a carrier",
            consumes=[EventContract("payment.charged", "1.0.0", json.dumps(CONSUMES), "The customer paid for an order")],
            produces=[EventContract("order.shipped", "1.0.0", json.dumps(PRODUCES), "An order left the warehouse")],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        try:
            paid = json.loads(bytes(event.data).decode("utf-8"))
            order_id, customer = paid["order_id"], paid["customer"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(StepError_Reject(f"data is not what this step reads: {e!r}"))
        tracking = "TRK%08d" % (fnv1a(order_id) % 100_000_000)
        host.log(host.Level.DEBUG, f"order {order_id} ships as {tracking}")
        shipped = {"order_id": order_id, "customer": customer, "carrier": "parcelco", "tracking": tracking}
        return [Emit("order.shipped", order_id, None, json.dumps(shipped, separators=(",", ":")).encode())]

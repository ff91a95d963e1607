"""payment-charge, in Python: charges the customer for a validated order.

One branch of the `order.validated` fan-out in the order example (the other
is inventory-reserve, in Rust). Emits `payment.charged`, which starts
shipping. The same contract as plugins/payment-charge (Rust).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import Contract, Emit, EventContract, StepError_Reject

VALIDATED = {
    "type": "object",
    "required": ["order_id", "customer", "total_cents"],
    "properties": {
        "order_id": {"type": "string"},
        "customer": {"type": "string"},
        "total_cents": {"type": "integer", "minimum": 0},
    },
}
CHARGED = {
    "type": "object",
    "required": ["order_id", "customer", "amount_cents", "payment_id"],
    "properties": {
        "order_id": {"type": "string"},
        "customer": {"type": "string"},
        "amount_cents": {"type": "integer", "minimum": 0},
        "payment_id": {"type": "string"},
    },
}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="payment-charge",
            version="1.0.0",
            description="Charges the customer for a validated order",
            consumes=[EventContract("order.validated", "1.0.0", json.dumps(VALIDATED), "An order passed validation and has a total")],
            produces=[EventContract("payment.charged", "1.0.0", json.dumps(CHARGED), "The customer paid for an order")],
            deterministic=True,
        )

    def handle(self, event) -> list[Emit]:
        try:
            order = json.loads(bytes(event.data).decode("utf-8"))
            order_id, customer, total = order["order_id"], order["customer"], int(order["total_cents"])
        except (ValueError, KeyError, TypeError) as e:
            raise Err(StepError_Reject(f"data is not what this step reads: {e!r}"))
        host.log(host.Level.INFO, f"charging {customer} {total} cents for {order_id}")
        charged = {"order_id": order_id, "customer": customer, "amount_cents": total, "payment_id": f"pay-{order_id}"}
        return [Emit("payment.charged", order_id, None, json.dumps(charged, separators=(",", ":")).encode())]

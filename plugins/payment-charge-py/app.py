"""payment-charge, in Python: charges the customer for a validated order.

One branch of the `order.validated` fan-out in the order example (the other
is inventory-reserve, in Rust). It charges through the payment provider's
HTTP API (examples/orders/payments-api), then emits `payment.charged`, which
starts shipping. The same contract as plugins/payment-charge (Rust).

What it may call is granted in the app's troupe.toml: the provider's
`/v1/` and nothing else. The API key is a header the host adds; this code
never sees it. Every request carries an `Idempotency-Key` the host derives
from the event, the same on every redelivery: a retried order is not
charged twice. If the order names a `receipt_url`, a receipt is posted there
too; a host outside the grant is refused by Troupe and the step carries on.
"""

import json
import os

import troupe_http
import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.troupe_step_types import Contract, Emit, EventContract, StepError_Reject, StepError_Retry

VALIDATED = {
    "type": "object",
    "required": ["order_id", "customer", "total_cents"],
    "properties": {
        "order_id": {"type": "string"},
        "customer": {"type": "string"},
        "total_cents": {"type": "integer", "minimum": 0},
        "receipt_url": {"type": "string"},
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
JSON = [("content-type", "application/json")]


def charge(order_id, customer, total):
    """The provider's charge id, or a StepError: retry while the provider
    is unreachable or failing, reject when it says no for good."""
    base = os.environ.get("PAYMENTS_URL")
    if not base:
        raise Err(StepError_Retry("PAYMENTS_URL is not set (grants.env in troupe.toml)"))
    body = json.dumps({"order_id": order_id, "customer": customer, "amount_cents": total}).encode()
    try:
        res = troupe_http.request("POST", base.rstrip("/") + "/charges", headers=JSON, body=body)
    except troupe_http.HttpError as e:
        raise Err(StepError_Retry(f"payment provider unreachable: {e}"))
    if res.status in (200, 201):
        replayed = " (already charged: the provider replayed it)" if res.header("idempotent-replayed") else ""
        payment_id = json.loads(res.body)["id"]
        host.log(host.Level.INFO, f"charged {customer} {total} cents for {order_id}: {payment_id}{replayed}")
        return payment_id
    said = res.body.decode("utf-8", "replace")[:200]
    if res.status >= 500 or res.status == 429:
        raise Err(StepError_Retry(f"payment provider answered {res.status}: {said}"))
    raise Err(StepError_Reject(f"payment refused ({res.status}): {said}"))


def send_receipt(url, charged):
    try:
        res = troupe_http.request("POST", url, headers=JSON, body=json.dumps(charged).encode())
        host.log(host.Level.INFO, f"receipt for {charged['order_id']} sent: {res.status}")
    except troupe_http.Denied:
        host.log(host.Level.WARN, f"receipt for {charged['order_id']} not sent: no grant allows {url}")
    except troupe_http.HttpError as e:
        host.log(host.Level.WARN, f"receipt for {charged['order_id']} not sent: {e}")


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Contract:
        return Contract(
            name="payment-charge",
            version="1.0.0",
            description="Charges the customer for a validated order",
            consumes=[EventContract("order.validated", "1.0.0", json.dumps(VALIDATED), "An order passed validation and has a total")],
            produces=[EventContract("payment.charged", "1.0.0", json.dumps(CHARGED), "The customer paid for an order")],
            deterministic=False,
        )

    def handle(self, event) -> list[Emit]:
        try:
            order = json.loads(bytes(event.data).decode("utf-8"))
            order_id, customer, total = order["order_id"], order["customer"], int(order["total_cents"])
        except (ValueError, KeyError, TypeError) as e:
            raise Err(StepError_Reject(f"data is not what this step reads: {e!r}"))
        payment_id = charge(order_id, customer, total)
        charged = {"order_id": order_id, "customer": customer, "amount_cents": total, "payment_id": payment_id}
        if order.get("receipt_url"):
            send_receipt(order["receipt_url"], charged)
        return [Emit("payment.charged", order_id, None, json.dumps(charged, separators=(",", ":")).encode())]

"""A service that is not a Troupe app, speaking to one over NATS.

It publishes an `order.placed` event the way any CloudEvents producer on
NATS would (the binding's binary mode: attributes as `ce-*` headers, the
data as the payload) and reads the `order.validated` event the app's
`order-validate` step answers with, through a consumer of its own.

    python client.py --server nats://127.0.0.1:4222 --namespace troupe

Needs nats-py (`pip install nats-py`; in this repository
`./scripts/toolchains testing` installs it in toolchains/testing/.venv).
See docs/brokers.md, "Services that are not Troupe apps".
"""

import argparse
import asyncio
import json
import sys
import urllib.parse
import uuid

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

SOURCE = "urn:example:shop-frontend"


def quote(value: str) -> str:
    """Percent-encode a header value as the NATS binding says (3.1.3.2):
    space, double quote, percent and everything outside printable ASCII."""
    return urllib.parse.quote(value, safe="!#$&'()*+,/:;=?@[]^_`{|}~-.<>\\")


async def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--server", default="nats://127.0.0.1:4222")
    args.add_argument("--namespace", default="troupe")
    args.add_argument("--order", default="o-1001")
    args.add_argument("--customer", default="Zoë")
    a = args.parse_args()
    ns = a.namespace

    nc = await nats.connect(a.server)
    js = nc.jetstream()

    # Our own consumer of the type we want, on the namespace's events
    # stream (its name is the namespace in capitals). Made before publishing, from new messages on; a real service
    # keeps its durable consumer and so its place across restarts.
    durable = "shop-frontend"
    stream = f"{ns.upper()}_EVENTS"
    for waited in range(60):
        try:
            sub = await js.pull_subscribe(
                f"{ns}.ev.order.validated",
                durable=durable,
                stream=stream,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT
                ),
            )
            break
        except NotFoundError:
            # The stream is made by the first Troupe host of the namespace.
            if waited == 0:
                print(f"waiting for stream {stream} (is a host of namespace {ns} running?)")
            await asyncio.sleep(0.5)
    else:
        print(f"no stream {stream} after 30 s", file=sys.stderr)
        return 1

    event_id = str(uuid.uuid4())
    order = {
        "order_id": a.order,
        "customer": a.customer,
        "lines": [{"sku": "tea", "qty": 2, "price_cents": 450}],
    }
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": SOURCE,
        "ce-type": "order.placed",
        "ce-subject": quote(a.order),
        "content-type": "application/json",
        # The server drops a second message with this id within its
        # duplicate window: a retried publish is stored once.
        "Nats-Msg-Id": f"{SOURCE} {event_id}",
    }
    ack = await js.publish(f"{ns}.ev.order.placed", json.dumps(order).encode(), headers=headers)
    print(f"published order.placed {event_id} (stream {ack.stream}, sequence {ack.seq})")

    try:
        for _ in range(30):
            try:
                msgs = await sub.fetch(10, timeout=1)
            except NatsTimeout:
                continue
            for m in msgs:
                h = {k.lower(): urllib.parse.unquote(v) for k, v in (m.headers or {}).items()}
                await m.ack()
                # Troupe keeps a cascade's correlation id: the id of the
                # event that began it.
                if h.get("ce-correlationid") != event_id:
                    continue
                data = json.loads(m.data)
                print(
                    f"received {h['ce-type']} {h['ce-id']} from {h['ce-source']}: "
                    f"order {data['order_id']} for {data['customer']}, "
                    f"total {data['total_cents']} cents"
                )
                return 0
        print("no order.validated within 30 s", file=sys.stderr)
        return 1
    finally:
        await js.delete_consumer(stream, durable)
        await nc.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

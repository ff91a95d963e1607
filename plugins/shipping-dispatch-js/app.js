// shipping-dispatch, in JavaScript: hands a paid order to a carrier.
//
// The same step as plugins/shipping-dispatch (Rust), shipping-dispatch-py
// and shipping-dispatch-c: consumes `payment.charged`, emits `order.shipped`
// with a tracking number derived from the order id (so every language, and
// every redelivery, gives the same answer).

import { log } from 'troupe:step/host@0.1.0';

const CONSUMES = {
  type: 'object',
  required: ['order_id', 'customer'],
  properties: { order_id: { type: 'string' }, customer: { type: 'string' } },
};
const PRODUCES = {
  type: 'object',
  required: ['order_id', 'customer', 'carrier', 'tracking'],
  properties: {
    order_id: { type: 'string' },
    customer: { type: 'string' },
    carrier: { type: 'string' },
    tracking: { type: 'string' },
  },
};

function fnv1a(text) {
  let h = 0xcbf29ce484222325n;
  for (const b of new TextEncoder().encode(text)) {
    h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  }
  return h;
}

export function describe() {
  return {
    name: 'shipping-dispatch',
    version: '1.0.0',
    description: 'Hands a paid order to a carrier',
    consumes: [{ kind: 'payment.charged', version: '1.0.0', schema: JSON.stringify(CONSUMES), description: 'The customer paid for an order' }],
    produces: [{ kind: 'order.shipped', version: '1.0.0', schema: JSON.stringify(PRODUCES), description: 'An order left the warehouse' }],
    deterministic: true,
  };
}

export function handle(event) {
  let paid;
  try {
    paid = JSON.parse(new TextDecoder().decode(event.data));
  } catch (e) {
    throw { tag: 'reject', val: `data is not JSON: ${e}` };
  }
  if (typeof paid?.order_id !== 'string' || typeof paid?.customer !== 'string') {
    throw { tag: 'reject', val: 'data lacks order_id or customer' };
  }
  const tracking = 'TRK' + String(fnv1a(paid.order_id) % 100000000n).padStart(8, '0');
  log('debug', `order ${paid.order_id} ships as ${tracking}`);
  const shipped = { order_id: paid.order_id, customer: paid.customer, carrier: 'parcelco', tracking };
  return [{ kind: 'order.shipped', subject: paid.order_id, contentType: undefined, data: new TextEncoder().encode(JSON.stringify(shipped)) }];
}

// customer-notify, in JavaScript: tells the customer their order shipped.
//
// The last hop of the order example: consumes `order.shipped`, emits
// `customer.notified` (meant for other systems: no step of the app
// consumes it).

import { log } from 'troupe:step/host@0.1.0';

const SHIPPED = {
  type: 'object',
  required: ['order_id', 'customer', 'carrier', 'tracking'],
  properties: {
    order_id: { type: 'string' },
    customer: { type: 'string' },
    carrier: { type: 'string' },
    tracking: { type: 'string' },
  },
};
const NOTIFIED = {
  type: 'object',
  required: ['order_id', 'customer', 'message'],
  properties: {
    order_id: { type: 'string' },
    customer: { type: 'string' },
    message: { type: 'string' },
  },
};

export function describe() {
  return {
    name: 'customer-notify',
    version: '1.0.0',
    description: 'Tells the customer their order shipped',
    consumes: [{ kind: 'order.shipped', version: '1.0.0', schema: JSON.stringify(SHIPPED), description: 'An order left the warehouse' }],
    produces: [{ kind: 'customer.notified', version: '1.0.0', schema: JSON.stringify(NOTIFIED), description: 'The customer was told' }],
    deterministic: true,
  };
}

export function handle(event) {
  let s;
  try {
    s = JSON.parse(new TextDecoder().decode(event.data));
  } catch (e) {
    throw { tag: 'reject', val: `data is not JSON: ${e}` };
  }
  if (typeof s?.order_id !== 'string' || typeof s?.customer !== 'string') {
    throw { tag: 'reject', val: 'data lacks order_id or customer' };
  }
  const message = `Hello ${s.customer}, order ${s.order_id} is on its way with ${s.carrier} (tracking ${s.tracking}).`;
  log('info', `notifying ${s.customer} about ${s.order_id}`);
  const notified = { order_id: s.order_id, customer: s.customer, message };
  return [{ kind: 'customer.notified', subject: s.order_id, data: new TextEncoder().encode(JSON.stringify(notified)) }];
}

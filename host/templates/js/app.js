// {{name}}: a Troupe step.
//
// Consumes `{{name}}.requested` and emits `{{name}}.done`. Change the
// contract in `describe` and the work in `handle`; build with
// `troupe build .` and check with `troupe conformance <component>`.

import { log } from 'troupe:step/host@0.1.0';

const REQUESTED = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1 } } };
const DONE = { type: 'object', required: ['id', 'ok'], properties: { id: { type: 'string' }, ok: { type: 'boolean' } } };

export function describe() {
  return {
    name: '{{name}}',
    version: '0.1.0',
    description: 'What {{name}} does',
    consumes: [{ kind: '{{name}}.requested', version: '1.0.0', schema: JSON.stringify(REQUESTED), description: 'Someone asked for {{name}}' }],
    produces: [{ kind: '{{name}}.done', version: '1.0.0', schema: JSON.stringify(DONE), description: '{{name}} did its work' }],
    deterministic: true,
  };
}

export function handle(event) {
  let request;
  try {
    request = JSON.parse(new TextDecoder().decode(event.data));
  } catch (e) {
    throw { tag: 'reject', val: `data is not JSON: ${e}` };
  }
  if (typeof request?.id !== 'string') {
    throw { tag: 'reject', val: 'data has no string `id`' };
  }
  log('info', `handling ${request.id}`);
  const done = { id: request.id, ok: true };
  return [{ kind: '{{name}}.done', subject: request.id, data: new TextEncoder().encode(JSON.stringify(done)) }];
}

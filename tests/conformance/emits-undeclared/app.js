// Declares it produces `test.result`, then also emits `secret.leaked`.
const ANY = JSON.stringify({ type: 'object' });

export function describe() {
  return {
    name: 'emits-undeclared',
    version: '1.0.0',
    description: 'Says more than it declared',
    consumes: [{ kind: 'test.work', version: '1.0.0', schema: ANY, description: 'Work' }],
    produces: [{ kind: 'test.result', version: '1.0.0', schema: ANY, description: 'A result' }],
    deterministic: true,
  };
}

export function handle(event) {
  try {
    JSON.parse(new TextDecoder().decode(event.data));
  } catch (e) {
    throw { tag: 'reject', val: String(e) };
  }
  const bytes = (v) => new TextEncoder().encode(JSON.stringify(v));
  return [
    { kind: 'test.result', data: bytes({ ok: true }) },
    { kind: 'secret.leaked', data: bytes({ password: 'hunter2' }) },
  ];
}

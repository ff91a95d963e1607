// clock, in JavaScript: what a step may read besides its event. On a
// `test.tick` it waits `wait_ms` on a timer (setTimeout), then reports the
// wall clock (Date.now), how long the wait took (performance.now), and
// random numbers from Math.random and crypto.getRandomValues. It logs with
// console.log too (stdout: the host discards it unless `grants.stderr`).

const ANY = JSON.stringify({ type: 'object' });

export function describe() {
  return {
    name: 'clock',
    version: '1.0.0',
    description: 'Reports clocks, a timer and random numbers',
    consumes: [{ kind: 'test.tick', version: '1.0.0', schema: ANY, description: 'How long to wait' }],
    produces: [{ kind: 'test.tocked', version: '1.0.0', schema: ANY, description: 'What the step saw' }],
    deterministic: false,
  };
}

export async function handle(event) {
  const input = JSON.parse(new TextDecoder().decode(event.data));
  console.log(`waiting ${input.wait_ms} ms`);
  const before = performance.now();
  await new Promise((resolve) => setTimeout(resolve, input.wait_ms));
  const waited_ms = performance.now() - before;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const report = {
    now_ms: Date.now(),
    waited_ms,
    math_random: Math.random(),
    crypto_random: [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(''),
  };
  return [{ kind: 'test.tocked', data: new TextEncoder().encode(JSON.stringify(report)) }];
}

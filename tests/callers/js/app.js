// caller, in JavaScript: makes the HTTP calls a `test.call` event lists,
// with `fetch`, and reports what each got in `test.called` (the protocol of
// the Rust fixture tests/guests/caller). `handle` is async: componentize-js
// runs the event loop until its promise settles.

const ANY = JSON.stringify({ type: 'object' });

export function describe() {
  return {
    name: 'caller',
    version: '1.0.0',
    description: 'Makes HTTP calls and reports what it saw',
    consumes: [{ kind: 'test.call', version: '1.0.0', schema: ANY, description: 'The calls to make' }],
    produces: [{ kind: 'test.called', version: '1.0.0', schema: ANY, description: 'What each call got' }],
    deterministic: false,
  };
}

export async function handle(event) {
  const input = JSON.parse(new TextDecoder().decode(event.data));
  const results = [];
  for (const c of input.calls) {
    const init = { method: c.method ?? 'GET', headers: c.headers ?? {}, redirect: 'manual' };
    if (c.body && c.body_after_ms !== undefined) {
      // A body the step writes only after `body_after_ms`.
      const bytes = new TextEncoder().encode(c.body);
      init.body = new ReadableStream({
        async start(controller) {
          await new Promise((resolve) => setTimeout(resolve, c.body_after_ms));
          controller.enqueue(bytes);
          controller.close();
        },
      });
      init.duplex = 'half';
    } else if (c.body) {
      init.body = c.body;
    }
    try {
      const res = await fetch(c.url, init);
      const body = await res.text();
      results.push({ status: res.status, headers: [...res.headers], body });
    } catch (e) {
      results.push({ error: `${e}` });
    }
  }
  const report = { results, attempt: event.attempt };
  return [{ kind: 'test.called', data: new TextEncoder().encode(JSON.stringify(report)) }];
}

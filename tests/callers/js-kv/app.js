// keeper, in JavaScript: does to its buckets what a `test.kv` event asks
// and reports what each op returned in `test.kv.done` (the protocol of the
// Rust fixture tests/guests/keeper, role `main`: ops get, set, delete,
// exists, keys, incr, open; `then` retry or reject), through
// `wasi:keyvalue` as componentize-js binds it: a failed call throws, with
// the interface's error in the exception's `payload`.
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';

const ANY = JSON.stringify({ type: 'object' });

export function describe() {
  return {
    name: 'keeper',
    version: '1.0.0',
    description: 'Reads and writes its buckets as asked',
    consumes: [{ kind: 'test.kv', version: '1.0.0', schema: ANY, description: 'Operations on buckets' }],
    produces: [{ kind: 'test.kv.done', version: '1.0.0', schema: ANY, description: 'What each operation returned' }],
    deterministic: false,
  };
}

function run(op) {
  const b = open(op.bucket ?? '');
  const key = op.key ?? '';
  switch (op.op) {
    case 'open': return true;
    case 'get': {
      const v = b.get(key);
      return v === undefined ? null : new TextDecoder().decode(v);
    }
    case 'set': b.set(key, new TextEncoder().encode(op.value ?? '')); return true;
    case 'delete': b.delete(key); return true;
    case 'exists': return b.exists(key);
    case 'keys': {
      const keys = [];
      let cursor;
      for (;;) {
        const page = b.listKeys(cursor);
        keys.push(...page.keys);
        if (page.cursor === undefined) return keys;
        cursor = page.cursor;
      }
    }
    case 'incr': return Number(increment(b, key, BigInt(op.delta ?? 1)));
    default: throw new Error(`unknown op ${op.op}`);
  }
}

function message(e) {
  const p = e.payload;
  if (p && p.tag === 'other') return p.val;
  if (p && p.tag) return p.tag;
  return String(e);
}

export function handle(event) {
  const part = JSON.parse(new TextDecoder().decode(event.data)).main;
  if (part === undefined) return [];
  const results = (part.ops ?? []).map((op) => {
    try {
      return { ok: run(op) };
    } catch (e) {
      return { error: message(e) };
    }
  });
  if (part.then === 'retry') throw { tag: 'retry', val: 'asked to retry' };
  if (part.then === 'reject') throw { tag: 'reject', val: 'asked to reject' };
  const report = { role: 'main', attempt: event.attempt, results };
  return [{ kind: 'test.kv.done', data: new TextEncoder().encode(JSON.stringify(report)) }];
}

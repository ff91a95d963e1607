"""troupe_kv: step state for a Troupe step written in Python.

`troupe build` puts this module on the path of a Python step whose sources
import it, and builds the step for the `troupe:step-kv/step-http-kv` world
(the step world plus `wasi:keyvalue` and outbound HTTP; the step's own
types module is then `wit_world.imports.troupe_step_types`). A step opens
its own bucket (`Bucket.own()`) and the buckets `troupe.toml` grants it
(`grants.kv`). Within one invocation, reads see the committed state plus
the invocation's own writes; the writes commit with the events `handle`
returns, or not at all (a retry, a reject, an exception discard them). See
docs/state.md.

    from troupe_kv import Bucket
    stock = Bucket.open("stock")
    left = int(stock.get("sku/tea") or b"0")
    stock.set("sku/tea", str(left - 1).encode())

A failed call raises `KvError` with the host's message (`unavailable` is
true when the store could not be read: worth a retry).
"""

from componentize_py_types import Err
from wit_world.imports import atomics, batch, store


class KvError(Exception):
    """A bucket call failed; the message says why."""

    def __init__(self, message):
        super().__init__(message)
        self.unavailable = message.startswith("the state store is unavailable")


def _call(f, *args):
    try:
        return f(*args)
    except Err as e:
        v = e.value
        if isinstance(v, store.Error_Other):
            raise KvError(v.value) from None
        if isinstance(v, store.Error_NoSuchStore):
            raise KvError("no such bucket") from None
        raise KvError("bucket access denied") from None


class Bucket:
    """An open bucket."""

    def __init__(self, raw):
        self.raw = raw

    @staticmethod
    def own():
        """The step's own bucket."""
        return Bucket(_call(store.open, ""))

    @staticmethod
    def open(name):
        """Bucket `name`: granted in `grants.kv`, or the step's own."""
        return Bucket(_call(store.open, name))

    def get(self, key):
        """The value (bytes) of `key`, or None."""
        return _call(self.raw.get, key)

    def set(self, key, value):
        """Set `key` to `value` (bytes, or str as UTF-8)."""
        if isinstance(value, str):
            value = value.encode()
        _call(self.raw.set, key, value)

    def delete(self, key):
        """Delete `key` (whether or not it has a value)."""
        _call(self.raw.delete, key)

    def exists(self, key):
        return _call(self.raw.exists, key)

    def keys(self):
        """Every key, sorted."""
        keys, cursor = [], None
        while True:
            page = _call(self.raw.list_keys, cursor)
            keys.extend(page.keys)
            if page.cursor is None:
                return keys
            cursor = page.cursor

    def increment(self, key, delta=1):
        """Add `delta` to the counter `key` (absent: 0); its new value."""
        return _call(atomics.increment, self.raw, key, delta)

    def get_many(self, keys):
        """The values of `keys`, in order (None where absent)."""
        return [None if kv is None else kv[1] for kv in _call(batch.get_many, self.raw, keys)]

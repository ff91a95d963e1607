"""troupe_http: outbound HTTP from a Troupe step written in Python.

`troupe build` puts this module on the path of a Python step whose sources
import it, and builds the step for the `troupe:step-http` world (the step
world plus `wasi:http/outgoing-handler`). What the step may reach is
granted in `troupe.toml` (`grants.http`); a request no grant allows raises
`Denied`. The host adds the grant's headers (secrets the step never sees),
an `Idempotency-Key` unless the step set one (the same on every redelivery
of the event) and a `traceparent`. See docs/capabilities.md.

    import troupe_http
    res = troupe_http.request("POST", "https://api.payments.example/v1/charges",
                              headers=[("content-type", "application/json")],
                              body=b'{"amount": 42}')
    if res.status == 201: ...

Redirects are not followed: a 3xx is returned as it is.
"""

from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as http


class HttpError(Exception):
    """The request got no response; `code` is wasi-http's error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Denied(HttpError):
    """No grant of the step allows the request."""


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        """The first value of header `name` (case-insensitive), as text."""
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v.decode("utf-8", "replace")
        return None


_METHODS = {
    "GET": http.Method_Get, "HEAD": http.Method_Head, "POST": http.Method_Post,
    "PUT": http.Method_Put, "DELETE": http.Method_Delete, "PATCH": http.Method_Patch,
    "OPTIONS": http.Method_Options,
}


def _raise(code):
    name = type(code).__name__.replace("ErrorCode_", "")
    if isinstance(code, http.ErrorCode_HttpRequestDenied):
        raise Denied(code, "HTTP-request-denied: no grant allows this request")
    raise HttpError(code, name)


def _await(future):
    while True:
        ready = future.get()
        if ready is not None:
            return ready
        with future.subscribe() as p:
            p.block()


def request(method, url, headers=(), body=b""):
    """Send a request and read the whole response."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers]
    if body and not any(k.lower() == "content-length" for k, _ in headers):
        # A body goes with its length (not chunked), as most services want.
        headers.append(("content-length", str(len(body)).encode()))
    fields = http.Fields.from_list(headers)
    req = http.OutgoingRequest(fields)
    m = method.upper()
    req.set_method(_METHODS[m]() if m in _METHODS else http.Method_Other(m))
    req.set_scheme(http.Scheme_Https() if scheme.lower() == "https" else http.Scheme_Http())
    req.set_authority(authority)
    req.set_path_with_query(path)
    out = req.body()
    if body:
        with out.write() as s:
            for i in range(0, len(body), 4096):
                s.blocking_write_and_flush(body[i:i + 4096])
    try:
        future = outgoing_handler.handle(req, None)
    except Err as e:
        _raise(e.value)
    http.OutgoingBody.finish(out, None)
    with future:
        got = _await(future)
    result = got.value
    if isinstance(got, Err):
        raise HttpError(None, "the response was already taken")
    if isinstance(result, Err):
        _raise(result.value)
    res = result.value
    with res:
        status = res.status()
        with res.headers() as h:
            entries = h.entries()
        incoming = res.consume()
        data = bytearray()
        with incoming.stream() as s:
            while True:
                try:
                    data += s.blocking_read(65536)
                except Err as e:
                    if isinstance(e.value, streams.StreamError_Closed):
                        break
                    raise HttpError(None, e.value.value.to_debug_string())
        trailers = http.IncomingBody.finish(incoming)
        with trailers:
            _await(trailers)
    return Response(status, entries, bytes(data))

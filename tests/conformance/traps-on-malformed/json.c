#include "json.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *p, *end;
} cur;

static void ws(cur *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

// Parse a string at c->p (which is '"'); store its unescaped text in *out
// (malloc'd) when out is not NULL.
static bool string(cur *c, char **out) {
  if (c->p >= c->end || *c->p != '"') return false;
  c->p++;
  char *s = out ? malloc((size_t)(c->end - c->p) + 1) : NULL;
  size_t n = 0;
  while (c->p < c->end && *c->p != '"') {
    char ch = *c->p++;
    if ((unsigned char)ch < 0x20) goto fail;
    if (ch == '\\') {
      if (c->p >= c->end) goto fail;
      char e = *c->p++;
      switch (e) {
        case 'n': ch = '\n'; break;
        case 't': ch = '\t'; break;
        case 'r': ch = '\r'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case '"': case '\\': case '/': ch = e; break;
        case 'u':
          if (c->end - c->p < 4) goto fail;
          if (s) { s[n++] = '\\'; s[n++] = 'u'; memcpy(s + n, c->p, 4); n += 4; }
          c->p += 4;
          continue;
        default: goto fail;
      }
    }
    if (s) s[n++] = ch;
  }
  if (c->p >= c->end) goto fail;
  c->p++;
  if (out) { s[n] = 0; *out = s; }
  return true;
fail:
  free(s);
  return false;
}

// Skip any JSON value.
static bool value(cur *c) {
  ws(c);
  if (c->p >= c->end) return false;
  char ch = *c->p;
  if (ch == '"') return string(c, NULL);
  if (ch == '{' || ch == '[') {
    char close = ch == '{' ? '}' : ']';
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == close) { c->p++; return true; }
    for (;;) {
      if (close == '}') {
        ws(c);
        if (!string(c, NULL)) return false;
        ws(c);
        if (c->p >= c->end || *c->p++ != ':') return false;
      }
      if (!value(c)) return false;
      ws(c);
      if (c->p >= c->end) return false;
      if (*c->p == ',') { c->p++; continue; }
      if (*c->p == close) { c->p++; return true; }
      return false;
    }
  }
  // number, true, false, null
  const char *start = c->p;
  while (c->p < c->end && strchr("+-.0123456789eEtrufalsn", *c->p)) c->p++;
  return c->p > start;
}

char *json_get_string(const char *json, size_t len, const char *key) {
  cur c = {json, json + len};
  char *found = NULL;
  ws(&c);
  if (c.p >= c.end || *c.p++ != '{') return NULL;
  ws(&c);
  if (c.p < c.end && *c.p == '}') return NULL;
  for (;;) {
    char *k = NULL;
    ws(&c);
    if (!string(&c, &k)) break;
    ws(&c);
    if (c.p >= c.end || *c.p++ != ':') { free(k); break; }
    ws(&c);
    bool want = strcmp(k, key) == 0 && !found;
    free(k);
    if (want && c.p < c.end && *c.p == '"') {
      if (!string(&c, &found)) break;
    } else if (!value(&c)) {
      break;
    }
    ws(&c);
    if (c.p < c.end && *c.p == ',') { c.p++; continue; }
    if (c.p < c.end && *c.p == '}') {
      c.p++;
      ws(&c);
      if (c.p == c.end) return found;  // the whole document was read
    }
    break;
  }
  free(found);
  return NULL;
}

static void put(json_buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->ptr = realloc(b->ptr, b->cap);
  }
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
  b->ptr[b->len] = 0;
}

void json_raw(json_buf *b, const char *s) { put(b, s, strlen(s)); }

void json_str(json_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  put(b, "\"", 1);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"') put(b, "\\\"", 2);
    else if (ch == '\\') put(b, "\\\\", 2);
    else if (ch < 0x20) {
      char u[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      put(b, u, 6);
    } else put(b, (const char *)s, 1);
  }
  put(b, "\"", 1);
}

#include "json.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
  const char *p, *end;
} cur;

static void ws(cur *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

// Read the four hex digits of a \u escape at c->p.
static bool hex4(cur *c, unsigned *v) {
  if (c->end - c->p < 4) return false;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char h = *c->p++;
    unsigned d;
    if (h >= '0' && h <= '9') d = (unsigned)(h - '0');
    else if (h >= 'a' && h <= 'f') d = (unsigned)(h - 'a' + 10);
    else if (h >= 'A' && h <= 'F') d = (unsigned)(h - 'A' + 10);
    else return false;
    *v = *v << 4 | d;
  }
  return true;
}

// Write code point `u` as UTF-8 at s; the number of bytes.
static size_t utf8(char *s, unsigned u) {
  if (u < 0x80) { s[0] = (char)u; return 1; }
  if (u < 0x800) { s[0] = (char)(0xc0 | u >> 6); s[1] = (char)(0x80 | (u & 0x3f)); return 2; }
  if (u < 0x10000) {
    s[0] = (char)(0xe0 | u >> 12); s[1] = (char)(0x80 | (u >> 6 & 0x3f));
    s[2] = (char)(0x80 | (u & 0x3f));
    return 3;
  }
  s[0] = (char)(0xf0 | u >> 18); s[1] = (char)(0x80 | (u >> 12 & 0x3f));
  s[2] = (char)(0x80 | (u >> 6 & 0x3f)); s[3] = (char)(0x80 | (u & 0x3f));
  return 4;
}

// A \u escape (c->p just past the 'u'), with its low surrogate when it is a
// high one: the code point. A lone surrogate is not text: refused.
static bool unicode(cur *c, unsigned *u) {
  if (!hex4(c, u)) return false;
  if (*u >= 0xdc00 && *u <= 0xdfff) return false;
  if (*u >= 0xd800 && *u <= 0xdbff) {
    unsigned lo;
    if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') return false;
    c->p += 2;
    if (!hex4(c, &lo) || lo < 0xdc00 || lo > 0xdfff) return false;
    *u = 0x10000 + ((*u - 0xd800) << 10) + (lo - 0xdc00);
  }
  return true;
}

// Parse a string at c->p (which is '"'); store its unescaped text, UTF-8,
// in *out (malloc'd) when out is not NULL. A string holding U+0000 is
// refused: a C string cannot carry it. (Every escape is shorter than the
// UTF-8 it stands for, so the copy fits in the input's length.)
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
        case 'u': {
          unsigned u;
          if (!unicode(c, &u) || u == 0) goto fail;
          if (s) n += utf8(s + n, u);
          continue;
        }
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

// A small JSON reader and writer, enough for a step's flat records: find a
// top-level string field of an object, and write JSON strings with escapes.
#ifndef TROUPE_JSON_H
#define TROUPE_JSON_H

#include <stdbool.h>
#include <stddef.h>

// Find the string value of top-level key `key` in the JSON object `json`.
// On success returns a malloc'd, NUL-terminated, unescaped copy; NULL when
// the document is not an object, the key is missing, or its value is not a
// string (or holds U+0000, which a C string cannot). Escapes are decoded:
// the copy is UTF-8 text, as the input was.
char *json_get_string(const char *json, size_t len, const char *key);

// A growable output buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} json_buf;

void json_raw(json_buf *b, const char *s);
// Append `s` as a quoted JSON string.
void json_str(json_buf *b, const char *s);

#endif

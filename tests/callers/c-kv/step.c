// keeper, in C: keeps state through wasi:keyvalue as wit-bindgen's C
// bindings of the `troupe:step-kv/step-kv` world give it (step_kv.h, which
// `troupe build` generates for a step whose sources call wasi_keyvalue_).
//
// Consumes `test.ckv` {"key", "value", "then"?}; in its own bucket it
// counts its runs ("runs", with atomics.increment); in the granted bucket
// "stock" it reads `key`, sets it to `value` and lists the keys; it tries
// to open bucket "secret", which is not granted. Emits `test.ckv.done`
// {"old", "runs", "keys", "denied"}; with "then": "retry" it asks for a
// retry instead (so none of its writes may commit). The test copies
// plugins/shipping-dispatch-c/json.{c,h} beside this file.

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "step_kv.h"

static const char *ANY = "{\"type\":\"object\"}";

static troupe_step_types_event_contract_t event_type(const char *kind, const char *what) {
  troupe_step_types_event_contract_t c;
  step_kv_string_dup(&c.kind, kind);
  step_kv_string_dup(&c.version, "1.0.0");
  step_kv_string_dup(&c.schema, ANY);
  step_kv_string_dup(&c.description, what);
  return c;
}

void exports_step_kv_describe(step_kv_contract_t *ret) {
  step_kv_string_dup(&ret->name, "c-kv");
  step_kv_string_dup(&ret->version, "1.0.0");
  step_kv_string_dup(&ret->description, "Keeps state in C");
  ret->consumes.len = 1;
  ret->consumes.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->consumes.ptr[0] = event_type("test.ckv", "A key to set");
  ret->produces.len = 1;
  ret->produces.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->produces.ptr[0] = event_type("test.ckv.done", "What the step saw");
  ret->deterministic = false;
}

static void fail(step_kv_step_error_t *err, uint8_t tag, const char *why) {
  err->tag = tag;
  // `retry` and `reject` both carry a string.
  step_kv_string_dup(&err->val.reject, why);
}

// The message of a keyvalue error, as a C string (malloc'd).
static char *message(wasi_keyvalue_store_error_t *e) {
  if (e->tag != WASI_KEYVALUE_STORE_ERROR_OTHER) return strdup("no such store or access denied");
  char *m = malloc(e->val.other.len + 1);
  memcpy(m, e->val.other.ptr, e->val.other.len);
  m[e->val.other.len] = 0;
  wasi_keyvalue_store_error_free(e);
  return m;
}

static bool open_bucket(const char *name, wasi_keyvalue_store_own_bucket_t *b, char **why) {
  step_kv_string_t id;
  step_kv_string_dup(&id, name);
  wasi_keyvalue_store_error_t e;
  bool ok = wasi_keyvalue_store_open(&id, b, &e);
  step_kv_string_free(&id);
  if (!ok) *why = message(&e);
  return ok;
}

bool exports_step_kv_handle(step_kv_event_t *event, step_kv_list_emit_t *ret, step_kv_step_error_t *err) {
  const char *data = (const char *)event->data.ptr;
  char *key = json_get_string(data, event->data.len, "key");
  char *value = json_get_string(data, event->data.len, "value");
  char *then = json_get_string(data, event->data.len, "then");
  char *why = NULL;
  bool ok = false;
  json_buf out = {0};
  wasi_keyvalue_store_own_bucket_t own, stock, secret;
  if (!key || !value) {
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_REJECT, "data lacks key or value");
    goto done;
  }
  if (!open_bucket("", &own, &why) || !open_bucket("stock", &stock, &why)) {
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_RETRY, why);
    goto done;
  }
  wasi_keyvalue_store_error_t e;
  step_kv_string_t k;

  uint64_t runs = 0;
  step_kv_string_dup(&k, "runs");
  bool counted = wasi_keyvalue_atomics_increment(wasi_keyvalue_store_borrow_bucket(own), &k, 1, &runs, &e);
  step_kv_string_free(&k);
  if (!counted) {
    why = message(&e);
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_RETRY, why);
    goto dropped;
  }

  step_kv_option_list_u8_t old;
  step_kv_string_dup(&k, key);
  bool got = wasi_keyvalue_store_method_bucket_get(wasi_keyvalue_store_borrow_bucket(stock), &k, &old, &e);
  step_kv_list_u8_t v = {(uint8_t *)value, strlen(value)};
  bool set = got && wasi_keyvalue_store_method_bucket_set(wasi_keyvalue_store_borrow_bucket(stock), &k, &v, &e);
  step_kv_string_free(&k);
  if (!got || !set) {
    why = message(&e);
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_RETRY, why);
    goto dropped;
  }

  json_raw(&out, "{\"old\":");
  if (old.is_some) {
    char *s = malloc(old.val.len + 1);
    memcpy(s, old.val.ptr, old.val.len);
    s[old.val.len] = 0;
    json_str(&out, s);
    free(s);
    free(old.val.ptr);
  } else {
    json_raw(&out, "null");
  }
  char n[32];
  snprintf(n, sizeof n, ",\"runs\":%" PRIu64 ",\"keys\":[", runs);
  json_raw(&out, n);
  wasi_keyvalue_store_key_response_t page;
  if (!wasi_keyvalue_store_method_bucket_list_keys(wasi_keyvalue_store_borrow_bucket(stock), NULL, &page, &e)) {
    why = message(&e);
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_RETRY, why);
    goto dropped;
  }
  for (size_t i = 0; i < page.keys.len; i++) {
    char *s = malloc(page.keys.ptr[i].len + 1);
    memcpy(s, page.keys.ptr[i].ptr, page.keys.ptr[i].len);
    s[page.keys.ptr[i].len] = 0;
    if (i) json_raw(&out, ",");
    json_str(&out, s);
    free(s);
  }
  wasi_keyvalue_store_key_response_free(&page);
  json_raw(&out, "],\"denied\":");
  char *denied = NULL;
  if (open_bucket("secret", &secret, &denied)) {
    wasi_keyvalue_store_bucket_drop_own(secret);
    json_raw(&out, "null");
  } else {
    json_str(&out, denied);
    free(denied);
  }
  json_raw(&out, "}");

  if (then && strcmp(then, "retry") == 0) {
    fail(err, TROUPE_STEP_TYPES_STEP_ERROR_RETRY, "asked to retry");
    goto dropped;
  }
  ret->len = 1;
  ret->ptr = malloc(sizeof(step_kv_emit_t));
  step_kv_emit_t *em = &ret->ptr[0];
  step_kv_string_dup(&em->kind, "test.ckv.done");
  em->subject.is_some = false;
  em->content_type.is_some = false;
  em->data.ptr = (uint8_t *)out.ptr;  // ownership passes to the bindings
  em->data.len = out.len;
  out.ptr = NULL;
  ok = true;

dropped:
  wasi_keyvalue_store_bucket_drop_own(own);
  wasi_keyvalue_store_bucket_drop_own(stock);
done:
  free(out.ptr);
  free(why);
  free(key);
  free(value);
  free(then);
  step_kv_event_free(event);
  return ok;
}

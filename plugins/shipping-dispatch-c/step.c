// shipping-dispatch, in C: hands a paid order to a carrier.
//
// The same step as plugins/shipping-dispatch (Rust), shipping-dispatch-py and
// shipping-dispatch-js: consumes `payment.charged`, emits `order.shipped` with
// a tracking number derived from the order id (so every language, and every
// redelivery, gives the same answer). Built with `troupe build`: clang for
// wasm32-wasi against bindings troupe generates into .troupe-build/gen.

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "step.h"

static const char *CONSUMES =
    "{\"type\":\"object\",\"required\":[\"order_id\",\"customer\"],"
    "\"properties\":{\"order_id\":{\"type\":\"string\"},\"customer\":{\"type\":\"string\"}}}";
static const char *PRODUCES =
    "{\"type\":\"object\",\"required\":[\"order_id\",\"customer\",\"carrier\",\"tracking\"],"
    "\"properties\":{\"order_id\":{\"type\":\"string\"},\"customer\":{\"type\":\"string\"},"
    "\"carrier\":{\"type\":\"string\"},\"tracking\":{\"type\":\"string\"}}}";

static troupe_step_types_event_contract_t event_type(const char *kind, const char *schema, const char *what) {
  troupe_step_types_event_contract_t c;
  step_string_dup(&c.kind, kind);
  step_string_dup(&c.version, "1.0.0");
  step_string_dup(&c.schema, schema);
  step_string_dup(&c.description, what);
  return c;
}

void exports_step_describe(step_contract_t *ret) {
  step_string_dup(&ret->name, "shipping-dispatch");
  step_string_dup(&ret->version, "1.0.0");
  step_string_dup(&ret->description, "Hands a paid order to a carrier");
  ret->consumes.len = 1;
  ret->consumes.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->consumes.ptr[0] = event_type("payment.charged", CONSUMES, "The customer paid for an order");
  ret->produces.len = 1;
  ret->produces.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->produces.ptr[0] = event_type("order.shipped", PRODUCES, "An order left the warehouse");
  ret->deterministic = true;
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
  return h;
}

static void reject(step_step_error_t *err, const char *why) {
  err->tag = TROUPE_STEP_TYPES_STEP_ERROR_REJECT;
  step_string_dup(&err->val.reject, why);
}

bool exports_step_handle(step_event_t *event, step_list_emit_t *ret, step_step_error_t *err) {
  const char *data = (const char *)event->data.ptr;
  char *order_id = json_get_string(data, event->data.len, "order_id");
  char *customer = json_get_string(data, event->data.len, "customer");
  bool ok = order_id && customer;
  if (!ok) {
    reject(err, "data is not a JSON object with string order_id and customer");
  } else {
    char tracking[16];
    snprintf(tracking, sizeof tracking, "TRK%08" PRIu64, fnv1a(order_id) % 100000000ULL);
    json_buf out = {0};
    json_raw(&out, "{\"order_id\":");
    json_str(&out, order_id);
    json_raw(&out, ",\"customer\":");
    json_str(&out, customer);
    json_raw(&out, ",\"carrier\":\"parcelco\",\"tracking\":");
    json_str(&out, tracking);
    json_raw(&out, "}");

    step_string_t line;
    step_string_dup(&line, "order shipped");
    troupe_step_host_log(TROUPE_STEP_HOST_LEVEL_DEBUG, &line);
    step_string_free(&line);

    ret->len = 1;
    ret->ptr = malloc(sizeof(step_emit_t));
    step_emit_t *e = &ret->ptr[0];
    step_string_dup(&e->kind, "order.shipped");
    e->subject.is_some = true;
    step_string_dup(&e->subject.val, order_id);
    e->content_type.is_some = false;
    e->data.ptr = (uint8_t *)out.ptr;  // ownership passes to the bindings
    e->data.len = out.len;
  }
  free(order_id);
  free(customer);
  step_event_free(event);
  return ok;
}

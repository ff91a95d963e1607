// {{name}}: a Troupe step.
//
// Consumes `{{name}}.requested` and emits `{{name}}.done`. Change the
// contract in `exports_step_describe` and the work in `exports_step_handle`;
// build with `troupe build .` (it generates step.h into .troupe-build/gen)
// and check with `troupe conformance <component>`.

#include <stdlib.h>

#include "json.h"
#include "step.h"

static const char *REQUESTED =
    "{\"type\":\"object\",\"required\":[\"id\"],\"properties\":{\"id\":{\"type\":\"string\",\"minLength\":1}}}";
static const char *DONE =
    "{\"type\":\"object\",\"required\":[\"id\",\"ok\"],"
    "\"properties\":{\"id\":{\"type\":\"string\"},\"ok\":{\"type\":\"boolean\"}}}";

static troupe_step_types_event_contract_t event_type(const char *kind, const char *schema, const char *what) {
  troupe_step_types_event_contract_t c;
  step_string_dup(&c.kind, kind);
  step_string_dup(&c.version, "1.0.0");
  step_string_dup(&c.schema, schema);
  step_string_dup(&c.description, what);
  return c;
}

void exports_step_describe(step_contract_t *ret) {
  step_string_dup(&ret->name, "{{name}}");
  step_string_dup(&ret->version, "0.1.0");
  step_string_dup(&ret->description, "What {{name}} does");
  ret->consumes.len = 1;
  ret->consumes.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->consumes.ptr[0] = event_type("{{name}}.requested", REQUESTED, "Someone asked for {{name}}");
  ret->produces.len = 1;
  ret->produces.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  ret->produces.ptr[0] = event_type("{{name}}.done", DONE, "{{name}} did its work");
  ret->deterministic = true;
}

bool exports_step_handle(step_event_t *event, step_list_emit_t *ret, step_step_error_t *err) {
  char *id = json_get_string((const char *)event->data.ptr, event->data.len, "id");
  bool ok = id != NULL;
  if (!ok) {
    err->tag = TROUPE_STEP_TYPES_STEP_ERROR_REJECT;
    step_string_dup(&err->val.reject, "data is not a JSON object with a string id");
  } else {
    json_buf out = {0};
    json_raw(&out, "{\"id\":");
    json_str(&out, id);
    json_raw(&out, ",\"ok\":true}");
    ret->len = 1;
    ret->ptr = malloc(sizeof(step_emit_t));
    step_emit_t *e = &ret->ptr[0];
    step_string_dup(&e->kind, "{{name}}.done");
    e->subject.is_some = true;
    step_string_dup(&e->subject.val, id);
    e->content_type.is_some = false;
    e->data.ptr = (uint8_t *)out.ptr;
    e->data.len = out.len;
  }
  free(id);
  step_event_free(event);
  return ok;
}

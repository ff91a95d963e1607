// Handles good data, but traps (instead of rejecting) when the data is not
// a JSON object: the host's gate would have stopped such data, but a step
// must not rely on that.
#include <stdlib.h>

#include "step.h"

static const char *WORK = "{\"type\":\"object\",\"required\":[\"id\"],\"properties\":{\"id\":{\"type\":\"string\"}}}";

void exports_step_describe(step_contract_t *ret) {
  step_string_dup(&ret->name, "traps-on-malformed");
  step_string_dup(&ret->version, "1.0.0");
  step_string_dup(&ret->description, "Trusts its input");
  ret->consumes.len = 1;
  ret->consumes.ptr = malloc(sizeof(troupe_step_types_event_contract_t));
  troupe_step_types_event_contract_t *c = &ret->consumes.ptr[0];
  step_string_dup(&c->kind, "test.work");
  step_string_dup(&c->version, "1.0.0");
  step_string_dup(&c->schema, WORK);
  step_string_dup(&c->description, "Work");
  ret->produces.len = 0;
  ret->produces.ptr = NULL;
  ret->deterministic = true;
}

bool exports_step_handle(step_event_t *event, step_list_emit_t *ret, step_step_error_t *err) {
  (void)err;
  if (event->data.len == 0 || event->data.ptr[0] != '{') __builtin_trap();
  step_event_free(event);
  ret->len = 0;
  ret->ptr = NULL;
  return true;
}

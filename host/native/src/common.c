#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static const char *errno_name(int err, char *buf, size_t n) {
  const char *name = strerrorname_np(err);
  if (name) return name;
  snprintf(buf, n, "E%d", err);
  return buf;
}

// Builds Error{message, code, errno, syscall[, path]} the way Node's fs errors look, so
// callers can switch on e.code without parsing messages.
static bool throw_coded(napi_env env, const char *code, int errnum, const char *syscall, const char *path,
                        const char *message) {
  napi_value msg, codev, err;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok) return false;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codev) != napi_ok) return false;
  if (napi_create_error(env, codev, msg, &err) != napi_ok) return false;
  if (errnum) {
    napi_value v;
    napi_create_int32(env, errnum, &v);
    napi_set_named_property(env, err, "errno", v);
  }
  if (syscall) {
    napi_value v;
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, err, "syscall", v);
  }
  if (path) {
    napi_value v;
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, err, "path", v);
  }
  napi_throw(env, err);
  return false;
}

bool throw_errno_path(napi_env env, const char *syscall, int err, const char *path) {
  char nbuf[16], msg[1024];
  const char *name = errno_name(err, nbuf, sizeof nbuf);
  if (path)
    snprintf(msg, sizeof msg, "%s: %s (%s) '%s'", syscall, name, strerror(err), path);
  else
    snprintf(msg, sizeof msg, "%s: %s (%s)", syscall, name, strerror(err));
  return throw_coded(env, name, err, syscall, path, msg);
}

bool throw_errno(napi_env env, const char *syscall, int err) { return throw_errno_path(env, syscall, err, NULL); }

napi_value errno_thrown(napi_env env, const char *syscall, int err) {
  throw_errno(env, syscall, err);
  return NULL;
}

bool throw_uv(napi_env env, const char *syscall, int uverr) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s (%s)", syscall, uv_err_name(uverr), uv_strerror(uverr));
  return throw_coded(env, uv_err_name(uverr), -uverr, syscall, NULL, msg);
}

bool throw_type(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return false;
}

bool throw_range(napi_env env, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
  return false;
}

bool throw_plain(napi_env env, const char *code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  napi_throw_error(env, code, msg);
  return false;
}

bool throw_napi(napi_env env, napi_status st, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return false; // a JS exception already explains it
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  return throw_plain(env, "ERR_NAPI", "%s failed: %s (napi status %d)", what,
                     info && info->error_message ? info->error_message : "unknown", (int)st);
}

bool get_args(napi_env env, napi_callback_info info, size_t cap, size_t required, napi_value *argv,
              napi_value *self, const char *fn) {
  size_t argc = cap;
  napi_status st = napi_get_cb_info(env, info, &argc, argv, self, NULL);
  if (st != napi_ok) return throw_napi(env, st, fn);
  if (argc < required) return throw_type(env, "%s: expected %zu arguments, got %zu", fn, required, argc);
  return true;
}

static const char *type_name(napi_env env, napi_value v) {
  napi_valuetype t = napi_undefined;
  napi_typeof(env, v, &t);
  switch (t) {
  case napi_undefined: return "undefined";
  case napi_null: return "null";
  case napi_boolean: return "boolean";
  case napi_number: return "number";
  case napi_string: return "string";
  case napi_symbol: return "symbol";
  case napi_object: return "object";
  case napi_function: return "function";
  case napi_external: return "external";
  case napi_bigint: return "bigint";
  }
  return "unknown";
}

// Doubles, not int64: napi_get_value_int64 silently truncates 1.5 and saturates 2^70,
// and we want to reject those rather than act on a different value than the caller meant.
static bool get_integer(napi_env env, napi_value v, const char *fn, const char *name, double max, double *out) {
  double d = 0;
  if (napi_get_value_double(env, v, &d) != napi_ok)
    return throw_type(env, "%s: %s must be a number, got %s", fn, name, type_name(env, v));
  if (isnan(d)) return throw_range(env, "%s: %s must be an integer in [0, %.0f], got NaN", fn, name, max);
  if (isinf(d))
    return throw_range(env, "%s: %s must be an integer in [0, %.0f], got %sInfinity", fn, name, max, d < 0 ? "-" : "");
  if (d != floor(d) || d < 0 || d > max)
    return throw_range(env, "%s: %s must be an integer in [0, %.0f], got %.17g", fn, name, max, d);
  *out = d;
  return true;
}

bool get_fd(napi_env env, napi_value v, const char *fn, const char *name, int *out) {
  double d = 0;
  if (!get_integer(env, v, fn, name, 2147483647.0, &d)) return false;
  *out = (int)d;
  return true;
}

bool one_fd(napi_env env, napi_callback_info info, const char *fn, int *fd) {
  napi_value argv[1];
  if (!get_args(env, info, 1, 1, argv, NULL, fn)) return false;
  return get_fd(env, argv[0], fn, "fd", fd);
}

bool one_fd_stat(napi_env env, napi_callback_info info, const char *fn, int *fd, struct stat *st) {
  if (!one_fd(env, info, fn, fd)) return false;
  if (fstat(*fd, st) < 0) return throw_errno(env, "fstat", errno);
  return true;
}

bool get_u64(napi_env env, napi_value v, const char *fn, const char *name, uint64_t *out) {
  double d = 0;
  if (!get_integer(env, v, fn, name, SAFE_INT_MAX, &d)) return false;
  *out = (uint64_t)d;
  return true;
}

bool get_bool(napi_env env, napi_value v, const char *fn, const char *name, bool *out) {
  if (napi_get_value_bool(env, v, out) != napi_ok)
    return throw_type(env, "%s: %s must be a boolean, got %s", fn, name, type_name(env, v));
  return true;
}

static size_t element_size(napi_typedarray_type t) {
  switch (t) {
  case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: return 1;
  case napi_int16_array: case napi_uint16_array: return 2;
  case napi_int32_array: case napi_uint32_array: case napi_float32_array: return 4;
  default: return 8;
  }
}

bool get_bytes(napi_env env, napi_value v, const char *fn, const char *name, void **data, size_t *len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type t;
    size_t n = 0;
    void *p = NULL;
    if (napi_get_typedarray_info(env, v, &t, &n, &p, NULL, NULL) != napi_ok)
      return throw_type(env, "%s: %s: cannot read the typed array", fn, name);
    *data = p;
    *len = n * element_size(t);
    return true;
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    if (napi_get_dataview_info(env, v, len, data, NULL, NULL) != napi_ok)
      return throw_type(env, "%s: %s: cannot read the DataView", fn, name);
    return true;
  }
  return throw_type(env, "%s: %s must be a Uint8Array (or another ArrayBuffer view), got %s", fn, name,
                    type_name(env, v));
}

// A typed array of exactly `want` elements' kind: an out buffer whose layout the caller reads
// as that type (a Float64Array where int64 bits were written would read garbage, silently).
bool get_typed(napi_env env, napi_value v, const char *fn, const char *name, napi_typedarray_type want,
               const char *want_name, void **data, size_t *len) {
  bool is = false;
  napi_typedarray_type t;
  size_t n = 0;
  void *p = NULL;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is || napi_get_typedarray_info(env, v, &t, &n, &p, NULL, NULL) != napi_ok ||
      t != want)
    return throw_type(env, "%s: %s must be a %s, got %s", fn, name, want_name, type_name(env, v));
  *data = p;
  *len = n * element_size(t);
  return true;
}

bool get_string(napi_env env, napi_value v, const char *fn, const char *name, size_t max_len, char **out) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok)
    return throw_type(env, "%s: %s must be a string, got %s", fn, name, type_name(env, v));
  if (n > max_len)
    return throw_range(env, "%s: %s is %zu bytes long; the limit is %zu bytes", fn, name, n, max_len);
  char *s = malloc(n + 1);
  if (!s) return throw_errno(env, "malloc", ENOMEM);
  napi_get_value_string_utf8(env, v, s, n + 1, &n);
  if (strlen(s) != n) {
    free(s);
    return throw_type(env, "%s: %s must not contain NUL characters", fn, name);
  }
  *out = s;
  return true;
}

napi_value make_number(napi_env env, double d) {
  napi_value v = NULL;
  napi_create_double(env, d, &v);
  return v;
}

napi_value make_bool(napi_env env, bool b) {
  napi_value v = NULL;
  napi_get_boolean(env, b, &v);
  return v;
}

napi_value make_undefined(napi_env env) {
  napi_value v = NULL;
  napi_get_undefined(env, &v);
  return v;
}

void *ctor_external(napi_env env, napi_callback_info info, napi_value *self, const char *cls, const char *factory) {
  napi_value argv[1];
  size_t argc = 1;
  napi_valuetype t = napi_undefined;
  void *p = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok) return NULL;
  if (argc == 1) napi_typeof(env, argv[0], &t);
  if (t != napi_external || napi_get_value_external(env, argv[0], &p) != napi_ok || !p) {
    throw_type(env, "%s cannot be constructed directly; use %s", cls, factory);
    return NULL;
  }
  return p;
}

bool wrap_tagged(napi_env env, napi_value self, const napi_type_tag *tag, void *p, napi_finalize fin, const char *what) {
  if (napi_type_tag_object(env, self, tag) != napi_ok || napi_wrap(env, self, p, fin, NULL, NULL) != napi_ok)
    return throw_napi(env, napi_generic_failure, what);
  return true;
}

void *unwrap_this(napi_env env, napi_value self, const napi_type_tag *tag, const char *fn, const char *what) {
  bool ok = false;
  void *p = NULL;
  if (napi_check_object_type_tag(env, self, tag, &ok) != napi_ok || !ok || napi_unwrap(env, self, &p) != napi_ok || !p) {
    throw_type(env, "%s: `this` is not %s", fn, what);
    return NULL;
  }
  return p;
}

bool set_fn(napi_env env, napi_value obj, const char *name, napi_callback cb) {
  napi_value f;
  if (napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &f) != napi_ok) return false;
  return napi_set_named_property(env, obj, name, f) == napi_ok;
}

addon_env *get_addon_env(napi_env env) {
  void *p = NULL;
  napi_get_instance_data(env, &p);
  return p;
}

napi_value make_fd_pair(napi_env env, int a, int b) {
  napi_value arr;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
      napi_set_element(env, arr, 0, make_number(env, a)) != napi_ok ||
      napi_set_element(env, arr, 1, make_number(env, b)) != napi_ok) {
    close(a);
    close(b);
    throw_napi(env, napi_generic_failure, "creating an fd pair");
    return NULL;
  }
  return arr;
}

// fd readiness on the calling thread's own libuv loop, so watchers work inside
// worker_threads. A watcher's memory is shared by two owners, the libuv handle and the JS
// object, and is freed only when both are done: uv_close has called back and the wrap's
// finalizer has run.
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct watcher {
  uv_poll_t poll; // first: the uv callbacks cast the handle back to the watcher
  napi_env env;
  addon_env *ae;
  napi_ref self_ref; // strong while open: an active watcher must not be collected
  napi_ref cb_ref;
  napi_async_context actx;
  bool linked, closing, handle_closed, object_gone, wrapped;
  struct watcher *prev, *next;
} watcher;

static const napi_type_tag WATCHER_TAG = {0x7668f57b57617463ULL, 0x686572a0b1c2d3e4ULL};

static void maybe_free(watcher *w) {
  if (w->handle_closed && w->object_gone) free(w);
}

static void on_close(uv_handle_t *h) {
  watcher *w = (watcher *)h;
  addon_env *ae = w->ae;
  w->handle_closed = true;
  ae->pending_closes--;
  // The worker's loop must hold none of our handles when it is closed, or Node aborts.
  if (ae->tearing_down && ae->pending_closes == 0 && ae->cleanup_handle) {
    napi_async_cleanup_hook_handle hh = ae->cleanup_handle;
    ae->cleanup_handle = NULL;
    napi_remove_async_cleanup_hook(hh);
  }
  maybe_free(w);
}

static void unlink_watcher(watcher *w) {
  if (!w->linked) return;
  if (w->prev) w->prev->next = w->next;
  else w->ae->watchers = w->next;
  if (w->next) w->next->prev = w->prev;
  w->linked = false;
}

static void begin_close(watcher *w) {
  if (w->closing) return;
  w->closing = true;
  unlink_watcher(w);
  uv_poll_stop(&w->poll);
  if (w->cb_ref) napi_delete_reference(w->env, w->cb_ref);
  if (w->self_ref) napi_delete_reference(w->env, w->self_ref);
  if (w->actx) napi_async_destroy(w->env, w->actx);
  w->cb_ref = w->self_ref = NULL;
  w->actx = NULL;
  w->ae->pending_closes++;
  uv_close((uv_handle_t *)&w->poll, on_close);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  watcher *w = (watcher *)h;
  if (w->closing) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, self, res;
  if (napi_get_reference_value(env, w->cb_ref, &cb) == napi_ok &&
      napi_get_reference_value(env, w->self_ref, &self) == napi_ok) {
    napi_value argv[3] = {
        make_bool(env, status == 0 && (events & UV_READABLE)),
        make_bool(env, status == 0 && (events & UV_WRITABLE)),
        make_bool(env, status < 0),
    };
    napi_status st = napi_make_callback(env, w->actx, self, cb, 3, argv, &res);
    if (st == napi_pending_exception) {
      // Nobody up the native stack can catch it: route it to process 'uncaughtException'.
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

static bool parse_events(napi_env env, napi_value v, const char *fn, int *out) {
  char buf[4];
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, buf, sizeof buf, &n) != napi_ok)
    return throw_type(env, "%s: events must be the string 'r', 'w' or 'rw'", fn);
  if (!strcmp(buf, "r")) *out = UV_READABLE;
  else if (!strcmp(buf, "w")) *out = UV_WRITABLE;
  else if (!strcmp(buf, "rw")) *out = UV_READABLE | UV_WRITABLE;
  else return throw_type(env, "%s: events must be 'r', 'w' or 'rw', got '%s'", fn, buf);
  return true;
}

static watcher *this_watcher(napi_env env, napi_value self, const char *fn) {
  return unwrap_this(env, self, &WATCHER_TAG, fn, "a Watcher returned by native.watch()");
}

static void watcher_finalize(napi_env env, void *data, void *hint) {
  watcher *w = data;
  w->object_gone = true;
  maybe_free(w);
}

static napi_value watcher_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  watcher *w = ctor_external(env, info, &self, "Watcher", "native.watch()");
  if (!w) return NULL;
  if (!wrap_tagged(env, self, &WATCHER_TAG, w, watcher_finalize, "Watcher constructor")) return NULL;
  w->wrapped = true;
  return self;
}

static napi_value watcher_update(napi_env env, napi_callback_info info) {
  napi_value argv[1], self;
  int ev;
  if (!get_args(env, info, 1, 1, argv, &self, "Watcher.update")) return NULL;
  watcher *w = this_watcher(env, self, "Watcher.update");
  if (!w) return NULL;
  if (w->closing) {
    throw_plain(env, "ERR_WATCHER_CLOSED", "Watcher.update: the watcher is closed; create a new one with watch()");
    return NULL;
  }
  if (!parse_events(env, argv[0], "Watcher.update", &ev)) return NULL;
  int err = uv_poll_start(&w->poll, ev, on_poll);
  if (err) {
    throw_uv(env, "uv_poll_start", err);
    return NULL;
  }
  return make_undefined(env);
}

static napi_value watcher_close(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Watcher.close")) return NULL;
  watcher *w = this_watcher(env, self, "Watcher.close");
  if (!w) return NULL;
  begin_close(w);
  return make_undefined(env);
}

// A watcher that must not keep its thread's loop alive on its own (a TAP port: the host exits
// when its sockets and devices are gone, whatever the interface still carries).
static napi_value watcher_unref(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Watcher.unref")) return NULL;
  watcher *w = this_watcher(env, self, "Watcher.unref");
  if (!w) return NULL;
  if (!w->closing) uv_unref((uv_handle_t *)&w->poll);
  return make_undefined(env);
}

static napi_value do_watch(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd, ev;
  if (!get_args(env, info, 3, 3, argv, NULL, "watch")) return NULL;
  if (!get_fd(env, argv[0], "watch", "fd", &fd)) return NULL;
  if (!parse_events(env, argv[1], "watch", &ev)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[2], &t);
  if (t != napi_function) {
    throw_type(env, "watch: cb must be a function");
    return NULL;
  }
  // libuv aborts the process if epoll_ctl later meets a bad fd; refuse it here instead.
  if (fcntl(fd, F_GETFD) < 0) return errno_thrown(env, "watch", errno);
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
    throw_napi(env, napi_generic_failure, "watch: napi_get_uv_event_loop");
    return NULL;
  }
  addon_env *ae = get_addon_env(env);
  if (ae->tearing_down) {
    throw_plain(env, "ERR_ENV_EXITING", "watch: this thread's environment is shutting down");
    return NULL;
  }
  watcher *w = calloc(1, sizeof *w);
  if (!w) return errno_thrown(env, "malloc", ENOMEM);
  w->env = env;
  w->ae = ae;
  int err = uv_poll_init(loop, &w->poll, fd);
  if (err) {
    free(w); // uv_poll_init validates the fd before it registers the handle
    if (err == UV_EEXIST)
      throw_plain(env, "EEXIST",
                  "watch: fd %d already has a watcher on this thread; update() or close() that one instead", fd);
    else
      throw_uv(env, "uv_poll_init", err);
    return NULL;
  }
  napi_value ctor, ext, obj = NULL, name;
  bool ok = napi_get_reference_value(env, ae->watcher_ctor, &ctor) == napi_ok &&
            napi_create_external(env, w, NULL, NULL, &ext) == napi_ok &&
            napi_new_instance(env, ctor, 1, &ext, &obj) == napi_ok &&
            napi_create_reference(env, obj, 1, &w->self_ref) == napi_ok &&
            napi_create_reference(env, argv[2], 1, &w->cb_ref) == napi_ok &&
            napi_create_string_utf8(env, "vhost_native.watch", NAPI_AUTO_LENGTH, &name) == napi_ok &&
            napi_async_init(env, obj, name, &w->actx) == napi_ok;
  if (ok) err = uv_poll_start(&w->poll, ev, on_poll);
  if (!ok || err) {
    if (!w->wrapped) w->object_gone = true; // no JS object will ever finalize it
    begin_close(w);
    if (err) throw_uv(env, "uv_poll_start", err);
    else throw_napi(env, napi_generic_failure, "watch: creating the Watcher");
    return NULL;
  }
  w->next = ae->watchers;
  if (ae->watchers) ae->watchers->prev = w;
  ae->watchers = w;
  w->linked = true;
  return obj;
}

// Runs when this thread's environment is torn down (a worker exiting with watchers open):
// close every handle and report done only after libuv has called back for all of them.
static void on_env_teardown(napi_async_cleanup_hook_handle h, void *arg) {
  addon_env *ae = arg;
  ae->tearing_down = true;
  while (ae->watchers) begin_close(ae->watchers);
  if (ae->pending_closes == 0) {
    ae->cleanup_handle = NULL;
    napi_remove_async_cleanup_hook(h);
  }
}

bool init_watch(napi_env env, napi_value exports, addon_env *ae) {
  napi_property_descriptor methods[] = {
      {"update", NULL, watcher_update, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, watcher_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"unref", NULL, watcher_unref, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "Watcher", NAPI_AUTO_LENGTH, watcher_ctor, NULL, 3, methods, &cls) != napi_ok)
    return false;
  if (napi_create_reference(env, cls, 1, &ae->watcher_ctor) != napi_ok) return false;
  if (napi_add_async_cleanup_hook(env, on_env_teardown, ae, &ae->cleanup_handle) != napi_ok) return false;
  return set_fn(env, exports, "watch", do_watch);
}

// mmap(MAP_SHARED) exposed as bounded ArrayBuffer windows. The invariant that keeps this
// memory-safe: the pages stay mapped while any window can still reach them. unmap()
// detaches every live window before munmap; if the Mapping object is collected instead,
// the munmap waits until the last window's backing store is released too.
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct mapping mapping;

typedef struct window_entry {
  mapping *m;
  napi_ref ref; // weak: windows must stay collectable
  struct window_entry *prev, *next;
} window_entry;

struct mapping {
  uint8_t *base;
  uint64_t size;
  bool mapped;
  bool wrapped;
  bool object_gone;
  size_t live_windows;
  window_entry *windows;
};

// Distinguishes Mapping objects from other wrapped objects (a Watcher passed as `this`).
static const napi_type_tag MAPPING_TAG = {0x7668f57b4d617070ULL, 0x6d6170706e67a001ULL};

static void release_if_unreachable(mapping *m) {
  if (!m->object_gone || m->live_windows > 0) return;
  if (m->mapped) munmap(m->base, m->size);
  free(m);
}

static void window_finalize(napi_env env, void *data, void *hint) {
  window_entry *e = hint;
  mapping *m = e->m;
  if (e->prev) e->prev->next = e->next;
  else m->windows = e->next;
  if (e->next) e->next->prev = e->prev;
  if (e->ref) napi_delete_reference(env, e->ref);
  free(e);
  m->live_windows--;
  release_if_unreachable(m);
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
  mapping *m = data;
  m->object_gone = true;
  release_if_unreachable(m);
}

static mapping *this_mapping(napi_env env, napi_value self, const char *fn) {
  return unwrap_this(env, self, &MAPPING_TAG, fn, "a Mapping returned by native.mmap()");
}

static napi_value mapping_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  mapping *m = ctor_external(env, info, &self, "Mapping", "native.mmap()");
  if (!m) return NULL;
  napi_property_descriptor size = {"size", NULL, NULL, NULL, NULL, make_number(env, (double)m->size),
                                   napi_enumerable, NULL};
  if (napi_define_properties(env, self, 1, &size) != napi_ok) {
    throw_napi(env, napi_generic_failure, "Mapping constructor");
    return NULL;
  }
  if (!wrap_tagged(env, self, &MAPPING_TAG, m, mapping_finalize, "Mapping constructor")) return NULL;
  m->wrapped = true;
  return self;
}

static napi_value mapping_window(napi_env env, napi_callback_info info) {
  napi_value argv[2], self;
  uint64_t off, len;
  if (!get_args(env, info, 2, 2, argv, &self, "Mapping.window")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.window");
  if (!m) return NULL;
  if (!m->mapped) {
    throw_plain(env, "ERR_MAPPING_UNMAPPED", "Mapping.window: the mapping was unmapped; mmap the region again");
    return NULL;
  }
  if (!get_u64(env, argv[0], "Mapping.window", "offset", &off)) return NULL;
  if (!get_u64(env, argv[1], "Mapping.window", "length", &len)) return NULL;
  if (len == 0 || len > MAX_WINDOW) {
    throw_range(env, "Mapping.window: length %llu is out of range; it must be in [1, %llu] (MAX_WINDOW)",
                (unsigned long long)len, (unsigned long long)MAX_WINDOW);
    return NULL;
  }
  if (off >= m->size || len > m->size - off) {
    throw_range(env, "Mapping.window: [offset %llu, +length %llu) runs past the end of the %llu-byte mapping",
                (unsigned long long)off, (unsigned long long)len, (unsigned long long)m->size);
    return NULL;
  }
  window_entry *e = calloc(1, sizeof *e);
  if (!e) {
    throw_errno(env, "malloc", ENOMEM);
    return NULL;
  }
  e->m = m;
  e->next = m->windows;
  if (m->windows) m->windows->prev = e;
  m->windows = e;
  m->live_windows++;
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, m->base + off, (size_t)len, window_finalize, e, &ab);
  if (st != napi_ok) {
    // Node has already run (or queued) window_finalize for `e`; touching it would double free.
    throw_napi(env, st, "Mapping.window: napi_create_external_arraybuffer");
    return NULL;
  }
  if (napi_create_reference(env, ab, 0, &e->ref) != napi_ok) {
    // Without a handle to detach it, this window could outlive the pages: refuse it.
    napi_detach_arraybuffer(env, ab);
    throw_napi(env, napi_generic_failure, "Mapping.window: napi_create_reference");
    return NULL;
  }
  return ab;
}

static napi_value mapping_unmap(napi_env env, napi_callback_info info) {
  napi_value self;
  if (!get_args(env, info, 0, 0, NULL, &self, "Mapping.unmap")) return NULL;
  mapping *m = this_mapping(env, self, "Mapping.unmap");
  if (!m) return NULL;
  if (!m->mapped) return make_undefined(env);
  // `next` is read first: should a Node version finalize synchronously on detach, `e` is freed.
  for (window_entry *e = m->windows, *next; e; e = next) {
    next = e->next;
    napi_value ab = NULL;
    if (!e->ref || napi_get_reference_value(env, e->ref, &ab) != napi_ok) continue;
    if (!ab) continue; // already collected; its finalizer is on the way
    bool detached = false;
    napi_is_detached_arraybuffer(env, ab, &detached);
    if (detached) continue;
    napi_status st = napi_detach_arraybuffer(env, ab);
    if (st != napi_ok) {
      // Keep the pages mapped: unmapping under a live view would crash the process.
      throw_napi(env, st, "Mapping.unmap: detaching a window (the mapping stays mapped)");
      return NULL;
    }
  }
  if (munmap(m->base, m->size) < 0) {
    throw_errno(env, "munmap", errno);
    return NULL;
  }
  m->mapped = false;
  return make_undefined(env);
}

static napi_value do_mmap(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int fd;
  uint64_t size, off;
  bool writable;
  if (!get_args(env, info, 4, 4, argv, NULL, "mmap")) return NULL;
  if (!get_fd(env, argv[0], "mmap", "fd", &fd)) return NULL;
  if (!get_u64(env, argv[1], "mmap", "size", &size)) return NULL;
  if (!get_u64(env, argv[2], "mmap", "offset", &off)) return NULL;
  if (!get_bool(env, argv[3], "mmap", "writable", &writable)) return NULL;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  if (size == 0) {
    throw_range(env, "mmap: size must be at least 1 byte, got 0");
    return NULL;
  }
  if (off % page) {
    throw_range(env, "mmap: offset %llu is not a multiple of the page size (%llu)", (unsigned long long)off,
                (unsigned long long)page);
    return NULL;
  }
  if (off + size > (uint64_t)SAFE_INT_MAX) {
    throw_range(env, "mmap: offset %llu + size %llu exceeds 2^53-1", (unsigned long long)off,
                (unsigned long long)size);
    return NULL;
  }
  void *base = mmap(NULL, (size_t)size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, (off_t)off);
  if (base == MAP_FAILED) {
    throw_errno(env, "mmap", errno);
    return NULL;
  }
  mapping *m = calloc(1, sizeof *m);
  if (!m) {
    munmap(base, (size_t)size);
    throw_errno(env, "malloc", ENOMEM);
    return NULL;
  }
  m->base = base;
  m->size = size;
  m->mapped = true;

  addon_env *ae = get_addon_env(env);
  napi_value ctor, ext, obj = NULL;
  if (napi_get_reference_value(env, ae->mapping_ctor, &ctor) != napi_ok ||
      napi_create_external(env, m, NULL, NULL, &ext) != napi_ok ||
      napi_new_instance(env, ctor, 1, &ext, &obj) != napi_ok) {
    if (!m->wrapped) { // otherwise the wrap's finalizer owns m
      munmap(base, (size_t)size);
      free(m);
    }
    throw_napi(env, napi_generic_failure, "mmap: creating the Mapping object");
    return NULL;
  }
  return obj;
}

bool init_mapping(napi_env env, napi_value exports, addon_env *ae) {
  napi_property_descriptor methods[] = {
      {"window", NULL, mapping_window, NULL, NULL, NULL, napi_default_method, NULL},
      {"unmap", NULL, mapping_unmap, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls;
  if (napi_define_class(env, "Mapping", NAPI_AUTO_LENGTH, mapping_ctor, NULL, 2, methods, &cls) != napi_ok)
    return false;
  if (napi_create_reference(env, cls, 1, &ae->mapping_ctor) != napi_ok) return false;
  napi_value mw = make_number(env, (double)MAX_WINDOW);
  napi_property_descriptor props[] = {
      {"MAX_WINDOW", NULL, NULL, NULL, NULL, mw, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, 1, props) == napi_ok && set_fn(env, exports, "mmap", do_mmap);
}

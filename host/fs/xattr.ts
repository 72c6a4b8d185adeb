// Extended attributes (--xattr). Which names a guest may reach is --xattrmap's business
// (host/fs/xattr-map.ts); without one, `trusted.` and `security.` names stay on the host:
// `trusted.` belongs to the host's root and `security.` is the host's security policy (SELinux
// labels, file capabilities), so a guest that could set them would change what the host
// enforces, and one that could read them would see the host's policy. They are refused (EPERM)
// to set or remove, read as absent (ENODATA) and hidden from lists, as virtiofsd's "bad" rule
// does. `user.` and the rest of `system.` pass through.
//
// POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`) pass only with
// --posix-acl, when the guest kernel treats them as ACLs (FUSE_POSIX_ACL): without it a guest
// kernel would store them raw on the host and enforce nothing of them itself, so they are
// EOPNOTSUPP and left out of lists, as virtiofsd 1.13 does. Like virtiofsd 1.13, every name
// that begins one of them (`system.posix_acl`, `system.posix_acl_acc`, `system.`) is refused
// the same way, and before any --xattrmap rule, so a map cannot store one under another name.

/** Longest value or name list (XATTR_SIZE_MAX, XATTR_LIST_MAX). */
export const XATTR_MAX = 65536;

const ACL_NAMES = ['system.posix_acl_access', 'system.posix_acl_default'].map((n) => Buffer.from(n));

/**
 * Whether a (guest's) xattr name is one of the two POSIX ACL names or the start of one
 * (`system.posix_acl`, `system.`): the names refused without --posix-acl. An empty name is
 * none (it is malformed: EINVAL).
 */
export function isPosixAclName(name: Uint8Array): boolean {
  return name.length > 0 && ACL_NAMES.some((n) => name.length <= n.length && n.subarray(0, name.length).equals(name));
}

/**
 * A listxattr result (names, each NUL-terminated) with each name through `map`: its new
 * name, or null (or an empty one) to leave it out.
 */
export function mapNameList(list: Uint8Array, map: (name: Uint8Array) => Uint8Array | null): Uint8Array {
  const kept: Uint8Array[] = [];
  someName(list, (name) => {
    const g = map(name);
    if (g !== null && g.length > 0) kept.push(g, new Uint8Array(1));
    return false;
  });
  return Buffer.concat(kept);
}

/**
 * Calls `f` with each non-empty name of a listxattr result (NUL-terminated names), in order,
 * until it returns true; whether one did.
 */
function someName(list: Uint8Array, f: (name: Uint8Array) => boolean): boolean {
  let at = 0;
  while (at < list.length) {
    let end = list.indexOf(0, at);
    if (end < 0) end = list.length;
    if (end > at && f(list.subarray(at, end))) return true;
    at = end + 1;
  }
  return false;
}

/** A name list without the POSIX ACL names (and the starts of them, isPosixAclName); the same list when it has none. */
export function withoutPosixAcl(list: Uint8Array): Uint8Array {
  return someName(list, isPosixAclName) ? mapNameList(list, (name) => (isPosixAclName(name) ? null : name)) : list;
}

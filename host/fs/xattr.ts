// Which extended-attribute names a guest may reach (--xattr). `trusted.` names are for the
// host's root and `security.` names are the host's security policy (SELinux labels, file
// capabilities): a guest that could set them would change what the host enforces, and one
// that could read them would see the host's policy. virtiofsd maps such names with
// --xattrmap; we have no map yet, so they are refused (EPERM) and hidden from lists, which
// is what virtiofsd's "bad" map rule does. `user.` and `system.` (POSIX ACLs) pass through.

/** Longest value or name list (XATTR_SIZE_MAX, XATTR_LIST_MAX). */
export const XATTR_MAX = 65536;

const REFUSED = ['trusted.', 'security.'].map((p) => Buffer.from(p));

function startsWith(name: Uint8Array, prefix: Uint8Array): boolean {
  if (name.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (name[i] !== prefix[i]) return false;
  return true;
}

/** True for a name in a namespace the guest may not reach. */
export function xattrNameRefused(name: Uint8Array): boolean {
  return REFUSED.some((p) => startsWith(name, p));
}

/** A listxattr result (names, each NUL-terminated) without the refused names. */
export function visibleXattrNames(list: Uint8Array): Uint8Array {
  const kept: Uint8Array[] = [];
  let at = 0;
  while (at < list.length) {
    let end = list.indexOf(0, at);
    if (end < 0) end = list.length; // the kernel always terminates; be safe if not
    const name = list.subarray(at, end);
    if (name.length > 0 && !xattrNameRefused(name)) kept.push(list.subarray(at, Math.min(end + 1, list.length)));
    at = end + 1;
  }
  return Buffer.concat(kept);
}

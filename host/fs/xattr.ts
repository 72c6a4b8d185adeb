// Extended attributes (--xattr). Which names a guest may reach is --xattrmap's business
// (host/fs/xattr-map.ts); without one, `trusted.` and `security.` names stay on the host:
// `trusted.` belongs to the host's root and `security.` is the host's security policy (SELinux
// labels, file capabilities), so a guest that could set them would change what the host
// enforces, and one that could read them would see the host's policy. They are refused (EPERM)
// to set or remove, read as absent (ENODATA) and hidden from lists, as virtiofsd's "bad" rule
// does. `user.` and `system.` (POSIX ACLs) pass through.

/** Longest value or name list (XATTR_SIZE_MAX, XATTR_LIST_MAX). */
export const XATTR_MAX = 65536;

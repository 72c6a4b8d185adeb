// A disk or a shared directory is opened in the device worker; trying it here first makes a
// bad path an error on its own line, before any worker or socket exists for the device. Used
// by the single-device command line and by the daemon for each device it adds.
import { resolve } from 'node:path';
import { FileBacking } from '../storage/file.ts';
import type { StorageSpec } from '../storage/backing.ts';
import { FsShare } from '../fs/share.ts';
import type { FilesystemSpec } from '../fs/option.ts';

export function checkStorage(spec: StorageSpec | null): StorageSpec | null {
  if (spec?.kind !== 'file') return spec;
  const path = resolve(spec.path);
  FileBacking.open(path, spec.readOnly, { direct: spec.direct === true }).close();
  return { ...spec, path };
}

export function checkSharedDir(spec: FilesystemSpec): FilesystemSpec {
  const dir = resolve(spec.dir);
  // mandatory file handles that do not work here stop start-up too; prefer's fallback is
  // logged once, by the worker that opens the share for real.
  const inodeFileHandles = spec.inodeFileHandles === 'mandatory' ? 'mandatory' : 'never';
  new FsShare(dir, { readOnly: spec.readOnly, tag: spec.tag, inodeFileHandles }).close();
  return { ...spec, dir };
}

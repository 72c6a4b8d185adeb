// The fds a front-end sends for guest memory and the dirty log, checked before anything maps
// them. A mapping that reaches past the end of its file raises SIGBUS on first touch, which
// would take down every device in the process, so a range the file does not cover is refused
// here with the sizes named; and whether the file can still shrink later is reported, because
// that decides how a later shrink is handled (docs/security.md, "Front-ends").

import { native } from '../native/index.ts';
import { hex } from './guest-memory.ts';
import { VhostWasmError } from '../errors.ts';

/** F_SEAL_SEAL (linux/fcntl.h): no seal can be added any more. */
export const F_SEAL_SEAL = 0x1;
/** F_SEAL_SHRINK (linux/fcntl.h): the memfd can no longer be made smaller. */
export const F_SEAL_SHRINK = 0x2;
/** F_SEAL_GROW (linux/fcntl.h): the memfd can no longer be made larger. */
export const F_SEAL_GROW = 0x4;
/** statfs f_type of tmpfs and shmem (a memfd's file system; devtmpfs reports it too). */
export const TMPFS_MAGIC = 0x01021994;
/** statfs f_type of a FUSE file system: its reads and writes wait for the FUSE server (UringTarget.punt). */
export const FUSE_SUPER_MAGIC = 0x65735546;
/** F_SEAL_WRITE, F_SEAL_FUTURE_WRITE (linux/fcntl.h): the memfd's contents can no longer (or from now on no longer) be written. */
export const F_SEAL_WRITE = 0x8;
export const F_SEAL_FUTURE_WRITE = 0x10;

export class MemoryFdError extends VhostWasmError {
  static override readonly code = 'ERR_MEMORY_FD';
  override name = 'MemoryFdError';
}

export interface MemoryFdCheck {
  /** Size of the file behind the fd when checked. */
  fileSize: number;
  /**
   * Sealed against shrinking (a memfd with F_SEAL_SHRINK, as QEMU's memory-backend-memfd makes
   * by default): the check above holds for the mapping's whole life. Otherwise a later shrink
   * is contained by the fault guard and fails the connection.
   */
  sealed: boolean;
}

const TYPE_TEXT: Record<string, string> = {
  directory: 'a directory',
  char: 'a character device (such as /dev/zero, whose shared mappings are private to each process)',
  block: 'a block device',
  fifo: 'a pipe or FIFO',
  socket: 'a socket',
  other: 'a special file',
};

/**
 * Checks that `fd` is a regular file or memfd covering [offset, offset+size). `what` names the
 * region in the error ("memory region 2 (GPA 0x100000)").
 */
export function checkMemoryFd(fd: number, offset: number, size: number, what: string): MemoryFdCheck {
  let info;
  try {
    info = native.memoryFdInfo(fd);
  } catch (e) {
    throw new MemoryFdError(`${what}: cannot inspect its fd: ${(e as Error).message}`);
  }
  if (info.type !== 'file') {
    throw new MemoryFdError(
      `${what}: its fd is ${TYPE_TEXT[info.type] ?? info.type}, not a memfd or regular file; ` +
        'guest memory must be shared through one (QEMU: memory-backend-memfd or memory-backend-file with share=on)',
    );
  }
  if (offset > info.size || size > info.size - offset) {
    throw new MemoryFdError(
      `${what}: needs bytes [${hex(offset)}, ${hex(offset + size)}) of its fd (mmap offset ${hex(offset)}, size ${hex(size)}), ` +
        `but the file behind it has only ${hex(info.size)} bytes; the front-end described more memory than it shared`,
    );
  }
  return { fileSize: info.size, sealed: info.seals >= 0 && (info.seals & F_SEAL_SHRINK) !== 0 };
}

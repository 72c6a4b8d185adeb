// A vhost-user wire tap for tests: listens on its own socket, connects each front-end that
// arrives there to the back-end's socket, forwards every message unchanged (fds included) and
// records it decoded. It lets a test see exactly what QEMU sent and what the back-end answered,
// values and all, without relying on the back-end's own logging.
//
// Messages are framed like host/protocol/channel.ts (exactly a 12-byte header, then exactly its
// payload), so fds always travel with the message they were sent with. The back-end request
// channel (SET_BACKEND_REQ_FD) is passed through as an fd and is not tapped.

import { native } from '../../host/native/index.ts';
import type { Watcher } from '../../host/native/api.ts';
import { decodeReply, decodeRequest } from '../../host/protocol/codec.ts';
import { FLAG_NEED_REPLY, FLAG_REPLY, HEADER_SIZE } from '../../host/protocol/constants.ts';
import { requestName } from '../../host/protocol/requests.ts';
import type { AnyDecodedRequest, Header, Reply } from '../../host/protocol/messages.ts';

export interface TapRecord {
  /** Which connection through the tap (0 = the first front-end). */
  connection: number;
  /** 'request': front-end -> back-end; 'reply': back-end -> front-end. */
  dir: 'request' | 'reply';
  code: number;
  name: string;
  header: Header;
  payload: Uint8Array;
  fdCount: number;
  /** Decoded request (dir 'request'), or why it did not decode. */
  request?: AnyDecodedRequest;
  /** Decoded reply (dir 'reply'). */
  reply?: Reply;
  decodeError?: string;
}

export interface VhostUserTap {
  /** Point the front-end here. */
  readonly path: string;
  readonly records: TapRecord[];
  /** Requests (front-end -> back-end) named `name`, e.g. 'SET_MEM_TABLE'. */
  requests(name: string, connection?: number): TapRecord[];
  /** Replies (back-end -> front-end) to requests named `name`. */
  replies(name: string, connection?: number): TapRecord[];
  /** One line per message, for failure messages. */
  transcript(): string;
  /** Stops listening and drops any connection still open. */
  close(): void;
}

function parseHeader(b: Uint8Array): Header {
  const dv = new DataView(b.buffer, b.byteOffset, HEADER_SIZE);
  const flags = dv.getUint32(4, true);
  return {
    request: dv.getUint32(0, true),
    flags,
    size: dv.getUint32(8, true),
    reply: (flags & FLAG_REPLY) !== 0,
    needReply: (flags & FLAG_NEED_REPLY) !== 0,
  };
}

/** Reassembles whole messages from a non-blocking stream socket. */
class Framer {
  private header = new Uint8Array(HEADER_SIZE);
  private payload: Uint8Array | null = null;
  private got = 0;
  private fds: number[] = [];

  constructor(private readonly fd: number) {}

  /** Reads what is available; returns complete messages, or null at EOF. */
  drain(): { bytes: Uint8Array; header: Header; payload: Uint8Array; fds: number[] }[] | null {
    const out: { bytes: Uint8Array; header: Header; payload: Uint8Array; fds: number[] }[] = [];
    for (;;) {
      const target = this.payload ?? this.header;
      const r = native.recvMsg(this.fd, target.subarray(this.got), 8);
      if (r === null) return out;
      if (r.bytes === 0) {
        for (const fd of [...this.fds, ...r.fds]) native.close(fd);
        this.fds = [];
        return out.length ? out : null;
      }
      this.fds.push(...r.fds);
      this.got += r.bytes;
      if (this.got < target.length) continue;
      if (this.payload === null) {
        const h = parseHeader(this.header);
        if (h.size > 1 << 20) throw new Error(`tap: message ${h.request} claims a ${h.size}-byte payload`);
        this.payload = new Uint8Array(h.size);
        this.got = 0;
        if (h.size > 0) continue;
      }
      const header = parseHeader(this.header);
      const payload = this.payload;
      const bytes = new Uint8Array(HEADER_SIZE + payload.length);
      bytes.set(this.header, 0);
      bytes.set(payload, HEADER_SIZE);
      out.push({ bytes, header, payload, fds: this.fds });
      this.header = new Uint8Array(HEADER_SIZE);
      this.payload = null;
      this.got = 0;
      this.fds = [];
    }
  }
}

function sendAll(fd: number, bytes: Uint8Array, fds: number[]): void {
  let off = 0;
  const deadline = Date.now() + 5000;
  while (off < bytes.length) {
    const n = native.sendMsg(fd, bytes.subarray(off), off === 0 ? fds : []);
    if (n > 0) off += n;
    else if (Date.now() > deadline) throw new Error('tap: peer stopped reading for 5 s');
    else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
}

export interface TapOptions {
  /**
   * Protocol feature bits to hide from the front-end: cleared in the back-end's
   * GET_PROTOCOL_FEATURES reply (the record keeps the back-end's real value). E.g. hiding
   * CONFIGURE_MEM_SLOTS (bit 15) makes QEMU send SET_MEM_TABLE instead of ADD_MEM_REG.
   */
  hideProtocolFeatures?: bigint;
}

export function startTap(backendPath: string, path: string, opts: TapOptions = {}): VhostUserTap {
  const records: TapRecord[] = [];
  const listenFd = native.listenUnix(path, 4);
  const open = new Set<() => void>();
  let connections = 0;

  const onAccept = () => {
    for (;;) {
      const fe = native.accept(listenFd);
      if (fe < 0) return;
      const connection = connections++;
      let be: number;
      try {
        be = native.connectUnix(backendPath);
      } catch (e) {
        native.close(fe);
        throw e;
      }
      const watchers: Watcher[] = [];
      let closed = false;
      const shut = () => {
        if (closed) return;
        closed = true;
        for (const w of watchers) w.close();
        native.close(fe);
        native.close(be);
        open.delete(shut);
      };
      open.add(shut);
      const pump = (from: number, to: number, dir: 'request' | 'reply') => {
        const framer = new Framer(from);
        return () => {
          if (closed) return;
          const msgs = framer.drain();
          for (const m of msgs ?? []) {
            const rec: TapRecord = {
              connection, dir, code: m.header.request, name: requestName(m.header.request).replace(/ \(\d+\)$/, ''),
              header: m.header, payload: m.payload, fdCount: m.fds.length,
            };
            try {
              if (dir === 'request') rec.request = decodeRequest(m.header, m.payload, m.fds);
              else rec.reply = decodeReply(m.header.request, m.header, m.payload, m.fds);
            } catch (e) {
              rec.decodeError = (e as Error).message;
            }
            records.push(rec);
            if (dir === 'reply' && rec.name === 'GET_PROTOCOL_FEATURES' && opts.hideProtocolFeatures && m.payload.length === 8) {
              const dv = new DataView(m.bytes.buffer, m.bytes.byteOffset + HEADER_SIZE, 8);
              dv.setBigUint64(0, dv.getBigUint64(0, true) & ~opts.hideProtocolFeatures, true);
            }
            try {
              sendAll(to, m.bytes, m.fds);
            } finally {
              for (const fd of m.fds) native.close(fd);
            }
          }
          if (msgs === null) shut();
        };
      };
      watchers.push(native.watch(fe, 'r', pump(fe, be, 'request')));
      watchers.push(native.watch(be, 'r', pump(be, fe, 'reply')));
    }
  };
  const listenWatcher = native.watch(listenFd, 'r', onAccept);

  const pick = (dir: 'request' | 'reply', name: string, connection?: number) =>
    records.filter((r) => r.dir === dir && r.name === name && (connection === undefined || r.connection === connection));
  return {
    path,
    records,
    requests: (name, connection) => pick('request', name, connection),
    replies: (name, connection) => pick('reply', name, connection),
    transcript: () =>
      records
        .map((r) => `#${r.connection} ${r.dir === 'request' ? '->' : '<-'} ${r.name} size=${r.header.size} fds=${r.fdCount}` +
          (r.decodeError ? ` (undecodable: ${r.decodeError})` : ''))
        .join('\n'),
    close() {
      listenWatcher.close();
      native.close(listenFd);
      for (const shut of [...open]) shut();
    },
  };
}

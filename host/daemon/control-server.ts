// The management socket (the daemon's, and the single-device host's control socket beside its
// device socket, host/server/host-control.ts): a Unix stream socket, mode 0600, speaking JSON-RPC 2.0 one message
// per line (jsonrpc.ts; methods.ts says what each method does). Who may manage the daemon is
// decided twice: the file mode keeps other users from connecting at all, and SO_PEERCRED (the
// credentials the kernel recorded at connect(), which the peer cannot forge) is checked on
// every connection, so a socket whose mode was loosened, or one handed out by systemd, still
// admits only the daemon's own uid (and root). A refused peer gets one JSON-RPC error and is
// disconnected; nothing it sent is acted on.

import { chmodSync, unlinkSync } from 'node:fs';
import { claimSocketPath } from '../server/socket-path.ts';
import { Socket } from 'node:net';
import { native, errnoCode } from '../native/index.ts';
import type { Watcher } from '../native/api.ts';
import { createLogger, errorText } from '../log/logger.ts';
import { JSONRPC, MAX_MESSAGE_BYTES, parseRequest, RpcCode, RpcError, type RequestId, type RpcResponse } from './jsonrpc.ts';
import { VhostWasmError } from '../errors.ts';

const log = createLogger('control');

/** Connections served at once; more are closed straight away (a management client needs one). */
export const MAX_CONTROL_CONNECTIONS = 16;

/** Runs one method (throws RpcError to refuse it); `quiet` methods are not logged when done. */
export interface ControlMethods {
  /** `peer`: who asked (SO_PEERCRED at connect). */
  call(method: string, params: Record<string, unknown>, peer: { pid: number; uid: number }): Promise<unknown>;
  /** Runs once the answer to a successful `method` was written (the host's handover exits there). */
  afterAnswer?(method: string): void;
  quiet?: ReadonlySet<string>;
  /** Who is managed, for messages: "this daemon", "this host". */
  owner: string;
  /** Who a live listener on the path would be: "another daemon", "another host". */
  rival: string;
}

export class ControlSocketError extends VhostWasmError {
  static override readonly code = 'ERR_CONTROL_SOCKET';
  override name = 'ControlSocketError';
}


/** One management connection being served: what it runs now, and how to wake it when idle. */
interface Conn {
  /** The method of the request being answered, or null while it waits for one. */
  handling: string | null;
  /** Wakes its loop while it waits for a line. */
  wake: (() => void) | null;
  /** Owed the retirement notice (it was not asking for what retired the server). */
  notice: boolean;
}

export class ControlServer {
  private readonly watcher: Watcher;
  private readonly connections = new Map<Socket, Conn>();
  private closed = false;
  /** Set by retire(): why every request from now on is refused (another process serves the socket). */
  private retiredWith: string | null = null;
  /** uids allowed to manage the daemon: its own, and root's. */
  private readonly allowed: ReadonlySet<number>;

  private constructor(
    /** The listening socket (a host handover passes it on). */
    readonly fd: number,
    private ownedPath: string | null,
    private readonly methods: ControlMethods,
  ) {
    this.allowed = new Set([process.getuid!(), 0]);
    this.watcher = native.watch(fd, 'r', () => this.onAcceptable());
  }

  /** Listens at `path` (mode 0600), or on an inherited listening socket (`fd`, systemd's). */
  static open(where: { path: string } | { fd: number }, methods: ControlMethods): ControlServer {
    if ('fd' in where) {
      if (!native.isListeningUnixSocket(where.fd)) throw new ControlSocketError(`control socket fd ${where.fd} is not a listening Unix stream socket`);
      native.setNonBlocking(where.fd, true);
      return new ControlServer(where.fd, null, methods);
    }
    claimSocketPath(where.path, { name: `control socket ${where.path}`, rival: methods.rival, error: (m) => new ControlSocketError(m) });
    let fd;
    try {
      fd = native.listenUnix(where.path, 16);
    } catch (e) {
      throw new ControlSocketError(`control socket ${where.path}: ${errorText(e)}`, { cause: e });
    }
    try {
      // Between bind() and this chmod the socket has the umask's mode: the peer check below
      // covers that window.
      chmodSync(where.path, 0o600);
    } catch (e) {
      native.close(fd);
      throw new ControlSocketError(`control socket ${where.path}: cannot make it mode 0600: ${errorText(e)}`, { cause: e });
    }
    return new ControlServer(fd, where.path, methods);
  }

  private onAcceptable(): void {
    for (let i = 0; i < 16 && !this.closed && this.retiredWith === null; i++) {
      let conn: number;
      try {
        conn = native.accept(this.fd);
      } catch (e) {
        log.warn(`accept failed: ${errorText(e)}`);
        return;
      }
      if (conn < 0) return;
      this.admit(conn);
    }
  }

  private admit(conn: number): void {
    let cred;
    try {
      cred = native.peerCred(conn);
    } catch (e) {
      log.warn(`a control connection whose peer cannot be identified was closed: ${errorText(e)}`);
      native.close(conn);
      return;
    }
    const socket = new Socket({ fd: conn, readable: true, writable: true });
    if (!this.allowed.has(cred.uid)) {
      log.warn(`refused a control connection from uid ${cred.uid} (pid ${cred.pid}): only uid ${process.getuid!()} may manage ${this.methods.owner}`);
      socket.end(JSON.stringify(errorResponse(null, RpcCode.permissionDenied, `uid ${cred.uid} may not manage ${this.methods.owner}`)) + '\n');
      socket.on('error', () => {});
      return;
    }
    if (this.connections.size >= MAX_CONTROL_CONNECTIONS) {
      log.warn(`refused a control connection: ${MAX_CONTROL_CONNECTIONS} are open already`);
      socket.end(JSON.stringify(errorResponse(null, RpcCode.requestFailed, `too many control connections (${MAX_CONTROL_CONNECTIONS})`)) + '\n');
      socket.on('error', () => {});
      return;
    }
    const state: Conn = { handling: null, wake: null, notice: true };
    this.connections.set(socket, state);
    socket.on('close', () => this.connections.delete(socket));
    socket.on('error', (e) => log.debug(`control connection: ${errorText(e)}`));
    void this.serve(socket, state, cred);
  }

  /** Requests on one connection, answered in order. */
  private async serve(socket: Socket, conn: Conn, cred: { pid: number; uid: number }): Promise<void> {
    socket.setEncoding('utf8');
    let buffered = '';
    const lines: string[] = [];
    let ended = false;
    const wake = () => conn.wake?.();
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        lines.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
      if (Buffer.byteLength(buffered) > MAX_MESSAGE_BYTES) {
        // A line that never ends: answer once and hang up rather than buffer without bound.
        socket.end(JSON.stringify(errorResponse(null, RpcCode.invalidRequest, `a message is at most ${MAX_MESSAGE_BYTES} bytes, one per line`)) + '\n');
        ended = true;
        buffered = '';
      }
      wake();
    });
    socket.on('end', () => {
      ended = true;
      wake();
    });
    socket.on('close', () => {
      ended = true;
      wake();
    });
    for (;;) {
      if (this.retiredWith !== null) {
        this.refuseRetired(socket, conn, lines);
        return;
      }
      const line = lines.shift();
      if (line === undefined) {
        if (ended) break;
        await new Promise<void>((resolve) => (conn.wake = resolve));
        conn.wake = null;
        continue;
      }
      if (line.trim() === '') continue;
      const req = parseRequest(line);
      conn.handling = 'error' in req ? null : req.method;
      const { response, method } = await this.handle(req, cred);
      conn.handling = null;
      const after = method !== null && this.methods.afterAnswer ? () => this.methods.afterAnswer!(method) : null;
      if (response && !socket.destroyed && socket.writable) socket.write(JSON.stringify(response) + '\n', () => after?.());
      else after?.();
    }
    if (!socket.destroyed) socket.end();
  }

  /** The answer (null for a notification) and, when the method succeeded, its name. */
  private async handle(req: ReturnType<typeof parseRequest>, cred: { pid: number; uid: number }): Promise<{ response: RpcResponse | null; method: string | null }> {
    if ('error' in req) return { response: { jsonrpc: JSONRPC, id: req.id, error: req.error }, method: null };
    const id = req.id ?? null;
    const notification = req.id === undefined;
    const peer = `pid ${cred.pid}`;
    try {
      const result = await this.methods.call(req.method, req.params ?? {}, cred);
      if (!this.methods.quiet?.has(req.method)) log.info(`${req.method} from ${peer}: done`);
      return { response: notification ? null : { jsonrpc: JSONRPC, id, result }, method: req.method };
    } catch (e) {
      const err = e instanceof RpcError ? e : new RpcError(RpcCode.internalError, errorText(e));
      log.warn(`${req.method} from ${peer} refused: ${err.message}`);
      return { response: notification ? null : errorResponse(id, err.rpcCode, err.message, err.data), method: null };
    }
  }

  /**
   * Another process serves the management socket from now on (a handover committed): stop
   * accepting at once (the listening socket is the other process's; its file stays), and answer
   * every connection open here with `why` rather than with this process's view, then end it: a
   * request waiting or sent later gets it as its error, an idle connection gets it as a notice
   * (a JSON-RPC error with id null). A connection answering `keep` (the handover's own request)
   * gets its answer first and no notice.
   */
  retire(why: string, keep: string): void {
    if (this.closed || this.retiredWith !== null) return;
    this.retiredWith = why;
    this.watcher.close();
    native.close(this.fd);
    this.ownedPath = null;
    log.info(`management socket: ${why}; no more connections are taken here`);
    for (const conn of this.connections.values()) {
      if (conn.handling === keep) conn.notice = false;
      conn.wake?.();
    }
  }

  /** A connection of a retired server: its requests answered with why, or the notice, then ended. */
  private refuseRetired(socket: Socket, conn: Conn, lines: string[]): void {
    const why = this.retiredWith!;
    const answers: string[] = [];
    for (const line of lines.splice(0)) {
      if (line.trim() === '') continue;
      const req = parseRequest(line);
      // A notification gets no answer.
      if (!('error' in req) && req.id === undefined) continue;
      answers.push(JSON.stringify(errorResponse(req.id ?? null, RpcCode.requestFailed, why)));
    }
    if (answers.length === 0 && conn.notice) answers.push(JSON.stringify(errorResponse(null, RpcCode.requestFailed, why)));
    conn.notice = false;
    this.connections.delete(socket);
    if (socket.destroyed) return;
    socket.end(answers.map((a) => a + '\n').join(''));
  }

  /** The socket file is this server's to remove from now on (one handed over by another host). */
  adoptPath(path: string): void {
    this.ownedPath = path;
  }

  /** Stops accepting, closes every connection, removes the socket file (`keepPath`: another host serves it now). */
  close(keepPath = false): void {
    if (keepPath) this.ownedPath = null;
    if (this.closed) return;
    this.closed = true;
    if (this.retiredWith === null) {
      this.watcher.close();
      native.close(this.fd);
    }
    for (const s of this.connections.keys()) s.destroy();
    if (this.ownedPath) {
      try {
        unlinkSync(this.ownedPath);
      } catch {
        // already gone
      }
    }
  }
}

function errorResponse(id: RequestId, code: number, message: string, data?: RpcError['data']): RpcResponse {
  return { jsonrpc: JSONRPC, id, error: { code, message, ...(data ? { data } : {}) } };
}

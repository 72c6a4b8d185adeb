// A small QMP client: one unix socket, capabilities negotiation, commands
// matched to their replies by id, and asynchronous events kept in order.
//
//   const qmp = await Qmp.connect(path, { timeoutMs: 10_000, alive: () => qemuRunning });
//   await qmp.execute('query-status');            // -> { status: 'running', ... }
//   await qmp.waitEvent('STOP', 5000);

import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
  /** performance.now() when it arrived. */
  receivedAt: number;
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
  }
}

interface Pending {
  command: string;
  resolve: (v: any) => void;
  reject: (e: Error) => void;
}

export class Qmp {
  /** Every event received so far, oldest first. */
  readonly events: QmpEvent[] = [];
  /** The greeting's QEMU version, e.g. { major: 10, minor: 0, micro: 13 }. */
  version: { major: number; minor: number; micro: number } = { major: 0, minor: 0, micro: 0 };
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Set<() => void>();
  private closedError: Error | undefined;
  private greeting?: (g: any) => void;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (err) => this.onClose(err));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
  }

  /**
   * Connects (retrying until the socket exists and accepts, or `timeoutMs`), reads the
   * greeting and negotiates capabilities. `alive` lets the caller stop the retries early
   * when QEMU has already exited.
   */
  static async connect(path: string, opts: { timeoutMs?: number; alive?: () => boolean } = {}): Promise<Qmp> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    let lastErr: Error | undefined;
    for (;;) {
      if (opts.alive && !opts.alive()) throw new Error(`QMP ${path}: QEMU exited before accepting (${lastErr?.message ?? 'no attempt'})`);
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => {
            s.off('error', reject);
            resolve(s);
          });
          s.once('error', reject);
        });
        const qmp = new Qmp(sock);
        const greeting = await qmp.readGreeting(Math.max(1000, deadline - Date.now()));
        const v = greeting?.QMP?.version?.qemu;
        if (v) qmp.version = { major: v.major, minor: v.minor, micro: v.micro };
        await qmp.execute('qmp_capabilities');
        return qmp;
      } catch (err) {
        lastErr = err as Error;
        if (Date.now() > deadline) throw new Error(`QMP ${path}: ${lastErr.message}`);
        await sleep(20);
      }
    }
  }

  private readGreeting(timeoutMs: number): Promise<any> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.sock.destroy();
        reject(new Error('no QMP greeting'));
      }, timeoutMs);
      const onClose = (): void => {
        if (!this.closedError) return;
        clearTimeout(t);
        this.waiters.delete(onClose);
        reject(this.closedError);
      };
      this.greeting = (g) => {
        clearTimeout(t);
        this.waiters.delete(onClose);
        resolve(g);
      };
      this.waiters.add(onClose);
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: any;
      try {
        msg = JSON.parse(line);
      } catch {
        continue;
      }
      if (msg.QMP) {
        this.greeting?.(msg);
        this.greeting = undefined;
      } else if (msg.event) {
        this.events.push({ event: msg.event, data: msg.data, timestamp: msg.timestamp, receivedAt: performance.now() });
      } else if (msg.id !== undefined && this.pending.has(String(msg.id))) {
        const p = this.pending.get(String(msg.id))!;
        this.pending.delete(String(msg.id));
        if ('error' in msg) p.reject(new QmpError(p.command, msg.error.class, msg.error.desc));
        else p.resolve(msg.return);
      }
    }
    this.wake();
  }

  private onClose(err: Error): void {
    this.closedError ??= err;
    for (const p of this.pending.values()) p.reject(new Error(`QMP ${p.command}: ${this.closedError.message}`));
    this.pending.clear();
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  /** Runs a command; resolves with its `return`, rejects with QmpError (or when the connection drops). */
  execute<T = any>(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
    if (this.closedError) return Promise.reject(new Error(`QMP ${command}: ${this.closedError.message}`));
    const id = String(this.nextId++);
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command}: no reply in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        command,
        resolve: (v) => {
          clearTimeout(t);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    });
  }

  /**
   * Resolves with the first event named `name` (matching `pred`) received at or after index
   * `from` of `events` (default: only new ones); rejects on timeout or when the connection closes.
   */
  waitEvent(name: string, timeoutMs: number, pred: (e: QmpEvent) => boolean = () => true, from = this.events.length): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        for (let i = from; i < this.events.length; i++) {
          const e = this.events[i];
          if (e.event === name && pred(e)) {
            done();
            resolve(e);
            return true;
          }
        }
        if (this.closedError) {
          done();
          reject(new Error(`waiting for QMP event ${name}: ${this.closedError.message}`));
          return true;
        }
        return false;
      };
      const t = setTimeout(() => {
        done();
        reject(new Error(`no QMP event ${name} in ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(t);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

// The metrics endpoint: plain HTTP on a loopback (or any IP) address and port, or on a Unix
// socket (mode 0600, like the management socket), answering GET /metrics with the exposition
// and nothing else. Opt-in: `serve --metrics ADDRESS` or the config's "metrics".

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, unlinkSync } from 'node:fs';
import { claimSocketPath } from '../server/socket-path.ts';
import { native, errnoCode } from '../native/index.ts';
import { createLogger, errorText } from '../log/logger.ts';
import type { MetricsExporter } from './exporter.ts';
import { MetricsAddressError, type MetricsAddress } from './address.ts';

const log = createLogger('metrics');

/** Scrapers served at once; more wait in the kernel's backlog. */
const MAX_CONNECTIONS = 8;


export class MetricsServer {
  private constructor(
    private readonly server: Server,
    /** Where it listens, for the log and for clients: `http://127.0.0.1:9464/metrics` or the socket path. */
    readonly where: string,
    private readonly ownedPath: string | null,
  ) {}

  static async open(addr: MetricsAddress, exporter: MetricsExporter): Promise<MetricsServer> {
    const server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000, maxHeaderSize: 8192 }, (req, res) => void serve(exporter, req, res));
    server.maxConnections = MAX_CONNECTIONS;
    server.keepAliveTimeout = 5_000;
    if ('path' in addr) claimSocketPath(addr.path, { name: `metrics socket ${addr.path}`, rival: 'another process', error: (m) => new MetricsAddressError(m) });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        resolve();
      };
      if ('path' in addr) server.listen({ path: addr.path, backlog: 16 }, done);
      else server.listen({ host: addr.host, port: addr.port, backlog: 16, exclusive: true }, done);
    }).catch((e: unknown) => {
      const where = 'path' in addr ? addr.path : `${addr.host}:${addr.port}`;
      throw new MetricsAddressError(`metrics endpoint ${where}: ${errorText(e)}`, { cause: e });
    });
    server.on('error', (e) => log.error(`metrics endpoint: ${errorText(e)}`));
    if ('path' in addr) {
      chmodSync(addr.path, 0o600);
      return new MetricsServer(server, addr.path, addr.path);
    }
    const a = server.address();
    const port = typeof a === 'object' && a !== null ? a.port : addr.port;
    const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
    return new MetricsServer(server, `http://${host}:${port}/metrics`, null);
  }

  /** Stops listening (the socket path goes at once) and ends the connections of scrapers. */
  async close(): Promise<void> {
    if (this.ownedPath !== null) {
      try {
        unlinkSync(this.ownedPath);
      } catch {
        // Already gone: nothing to clean.
      }
    }
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

async function serve(exporter: MetricsExporter, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '').split('?')[0];
  if (path !== '/metrics') {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found: the metrics are at /metrics\n');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end('use GET\n');
    return;
  }
  try {
    const body = await exporter.metrics();
    res.writeHead(200, { 'content-type': exporter.contentType });
    res.end(req.method === 'HEAD' ? undefined : body);
  } catch (e) {
    log.error(`a scrape failed: ${errorText(e)}`);
    res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('metrics could not be collected (see the daemon log)\n');
  }
}

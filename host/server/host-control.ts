// The single-device host's control socket (`vhost-wasm --socket-path S ...` opens it at
// S.control unless --control says otherwise): the daemon's management socket
// (host/daemon/control-server.ts: mode 0600, SO_PEERCRED, JSON-RPC one message per line) with
// the one method such a host has, plugin-upgrade, run by the same code as the daemon's
// (Listener.upgrade -> host/server/plugin-upgrade.ts). `vhost-wasm upgrade --socket S` is its client.

import type { Host } from './index.ts';
import type { ControlMethods } from '../daemon/control-server.ts';
import { RpcCode, RpcError } from '../daemon/jsonrpc.ts';
import { failed, only, pluginParam, type MethodResults } from '../daemon/methods.ts';

/** Where the host's control socket is when only its device socket is known. */
export function controlPathFor(socketPath: string): string {
  return `${socketPath}.control`;
}

export const HOST_METHODS = ['plugin-upgrade'] as const;

export function hostMethods(host: Host): ControlMethods {
  return {
    owner: 'this host',
    rival: 'another host',
    async call(method, params) {
      if (method !== 'plugin-upgrade') throw new RpcError(RpcCode.methodNotFound, `no method "${method}" (a single-device host has: ${HOST_METHODS.join(', ')})`);
      // id is optional: the host has one device, named by its socket.
      only(params, ['plugin', 'id']);
      const plugin = pluginParam(params);
      const d = host.devices[0];
      if (params.id !== undefined && params.id !== d.config.label) {
        throw new RpcError(RpcCode.invalidParams, `params.id: this host serves ${d.config.label} only`, { field: 'params.id' });
      }
      if (d.config.source.kind !== 'plugin') throw failed(new Error('the device runs a module, not a plugin: nothing to upgrade'));
      try {
        return { id: d.config.label, plugin, ...(await d.listener.upgrade(plugin)) } satisfies MethodResults['plugin-upgrade'];
      } catch (e) {
        throw failed(e);
      }
    },
  };
}

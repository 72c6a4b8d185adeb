// The vhost-user protocol layer: constants, the request table, wire types, codec, framing channel.
export * from './constants.ts';
export * from './requests.ts';
export * from './messages.ts';
export * from './errors.ts';
export * from './codec.ts';
export * from './rfc-state-shm.ts';
export { MessageChannel, type ChannelOptions } from './channel.ts';
export { call, callBackend } from './client.ts';

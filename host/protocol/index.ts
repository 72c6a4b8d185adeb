// The vhost-user protocol layer: constants, wire types, codec, framing channel.
export * from './constants.ts';
export * from './messages.ts';
export * from './errors.ts';
export * from './codec.ts';
export { MessageChannel, type ChannelOptions } from './channel.ts';
export { call, callBackend } from './client.ts';

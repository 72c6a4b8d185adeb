// The WIT world's types under short names, for device code. They are the shapes the
// componentize-js glue lowers and lifts (variants as {tag, val}, u64 as bigint, option as
// value-or-undefined); bindings/ holds them as jco generated them from wit/device.wit.
/// <reference path="./bindings/virtio-device.d.ts" />
import type * as Types from 'vhost:device/types@0.2.2';
import type * as Device from 'vhost:device/device@0.2.2';
import type * as Fs from 'vhost:device/filesystem@0.2.2';

export type Request = Types.Request;
export type RequestId = Types.RequestId;
export type Extent = Types.Extent;
export type Piece = Types.Piece;
export type Transfer = Types.Transfer;
export type BackingOp = Types.BackingOp;
export type BackingOpKind = Types.BackingOpKind;
export type Answer = Types.Answer;
export type IoFailure = Types.IoFailure;
export type Frame = Types.Frame;
export type FrameSlice = Types.FrameSlice;
export type Send = Types.Send;
export type Port = Types.Port;
export type Event = Types.Event;
export type Action = Types.Action;
export type DeviceInfo = Device.DeviceInfo;
export type PluginIdentity = Device.PluginIdentity;
export type StateChunk = Device.StateChunk;
export type FsHandle = Fs.Handle;
export type FsAttr = Fs.Attr;
export type FsEntry = Fs.Entry;
export type FsDirEntry = Fs.DirEntry;
export type FsStats = Fs.FsStats;

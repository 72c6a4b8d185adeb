// Experimental: the 2023 RFC's shared-memory state channel (protocol feature bit 63, requests
// 1000-1002; wire format in host/protocol/rfc-state-shm.ts, design in docs/migration.md). Offered
// only with SessionSettings.experimentalRfcStateShm. It runs its transfer in the same slot as
// SET_DEVICE_STATE_FD (DeviceStateTransfers), so only one of the two runs at a time; its outcome
// is the answer to the detach, not to CHECK_DEVICE_STATE.

import { encodeU64Reply } from '../protocol/codec.ts';
import { DeviceStateDirection, featureBit } from '../protocol/constants.ts';
import { RFC_STATE_SHM_PROTOCOL_FEATURE, RfcStateReq, encodeRfcGetStateReply, type RfcStateRequest } from '../protocol/rfc-state-shm.ts';
import { RfcShmLoad, RfcShmSave, RfcShmTransfer, StateArea } from '../migration/rfc-shm.ts';
import { errorText } from '../log/logger.ts';
import { closeFds } from './fds.ts';
import { toNumber } from './request-error.ts';
import { DeviceStateError, type DeviceStateTransfers, type TransferHost } from './device-state.ts';

/** The protocol feature bit a session offers when the channel is switched on. */
export const RFC_STATE_SHM_FEATURE = featureBit(RFC_STATE_SHM_PROTOCOL_FEATURE);

export class RfcStateShmChannel {
  constructor(
    private readonly host: TransferHost,
    private readonly transfers: DeviceStateTransfers,
  ) {}

  /** Every extension request has a reply: each path below sends exactly one. */
  async handle(req: RfcStateRequest): Promise<void> {
    const { log } = this.host;
    const u64 = (v: number) => this.host.reply(encodeU64Reply(req.code, v));
    if (req.code === RfcStateReq.SET_STATE_AREA) {
      if (req.fd === null) return this.detach(u64);
      const fd = req.fd;
      const refuse = (code: number, why: string) => {
        log.error(`RFC_SET_STATE_AREA refused: ${why}`);
        return u64(code);
      };
      if (req.direction !== DeviceStateDirection.SAVE && req.direction !== DeviceStateDirection.LOAD) {
        closeFds([fd], log);
        return refuse(DeviceStateError.UNSUPPORTED, `direction ${req.direction} is neither SAVE (0) nor LOAD (1)`);
      }
      const ctx = await this.transfers.begin('RFC shm transfer', req.direction === DeviceStateDirection.SAVE ? 'save' : 'load');
      if ('refuse' in ctx) {
        closeFds([fd], log);
        return refuse(ctx.refuse, ctx.why);
      }
      const save = req.direction === DeviceStateDirection.SAVE;
      let area: StateArea;
      try {
        area = new StateArea(fd, toNumber(req.size, 'state area size'), toNumber(req.mmapOffset, 'state area offset'), save);
      } catch (e) {
        return refuse(DeviceStateError.FAILED, errorText(e)); // StateArea closed fd
      }
      this.transfers.adopt(save ? new RfcShmSave(area, ctx) : new RfcShmLoad(area, ctx));
      log.info(`device state ${save ? 'save' : 'load'} started through an RFC shm area of ${area.size} bytes (${ctx.identity.name} ${ctx.identity.version})`);
      return u64(0);
    }
    const t = this.transfers.current;
    const offset = Number(req.offset);
    const size = Number(req.size);
    if (req.code === RfcStateReq.GET_STATE) {
      try {
        if (!(t instanceof RfcShmSave)) throw new Error('no SAVE state area is attached');
        const r = await t.getState(offset, size);
        return this.host.reply(encodeRfcGetStateReply({ status: 0n, length: BigInt(r.length), remaining: BigInt(r.remaining) }));
      } catch (e) {
        log.error(`RFC_GET_STATE offset ${req.offset} size ${req.size} failed: ${errorText(e)}`);
        return this.host.reply(encodeRfcGetStateReply({ status: BigInt(DeviceStateError.FAILED), length: 0n, remaining: 0n }));
      }
    }
    try {
      if (!(t instanceof RfcShmLoad)) throw new Error('no LOAD state area is attached');
      await t.setState(offset, size);
      return u64(0);
    } catch (e) {
      log.error(`RFC_SET_STATE offset ${req.offset} size ${req.size} failed: ${errorText(e)}`);
      return u64(DeviceStateError.FAILED);
    }
  }

  /** RFC_SET_STATE_AREA without an fd: ends the transfer; the answer is its outcome (the RFC's final check). */
  private async detach(u64: (v: number) => Promise<void>): Promise<void> {
    const { log } = this.host;
    const t = this.transfers.current;
    if (!(t instanceof RfcShmTransfer)) {
      log.error('RFC_SET_STATE_AREA detach without an attached state area: reporting failure');
      return u64(DeviceStateError.FAILED);
    }
    const err = await t.detach();
    this.transfers.collected();
    if (err !== null) log.error(`RFC state ${t.direction} failed: ${err}`);
    else log.info(`device state ${t.direction === 'save' ? 'saved' : 'loaded'}: ${t.stats.bytes} bytes through the RFC shm area in ${t.stats.ms.toFixed(1)} ms`);
    return u64(err === null ? 0 : DeviceStateError.FAILED);
  }
}

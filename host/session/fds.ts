// Closing fds the session owns. A failed close is logged, not thrown: refusal and teardown
// paths close several fds in a row and must reach the last one.

import { native } from '../native/index.ts';
import { errorText, type Logger } from '../log/logger.ts';

export function closeFds(fds: readonly (number | null)[], log: Logger): void {
  for (const fd of fds) {
    if (fd === null || fd < 0) continue;
    try {
      native.close(fd);
    } catch (e) {
      log.warn(`closing fd ${fd}: ${errorText(e)}`);
    }
  }
}

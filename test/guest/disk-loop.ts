// The guest disk loop the blk migration tests run (qemu-migration-harness against QEMU's own
// storage daemon, migration-qemu against our host): one script, so both prove the same thing.
//
// Iteration i writes block i, reads it back (O_DIRECT both ways) and compares; once the guest
// knows it runs on the destination (`migrated`, see migration.ts) it does `after` more
// iterations, then re-reads every block written since boot, the pre-migration ones included.
// Console: "ITER <i> ok" per iteration ("ITER <i> ok dest" on the destination), then
// "VERIFIED <i>"; MISMATCH / VERIFY-MISMATCH / TOO-MANY-ITERATIONS on failure.

/** Block size of the loop (bytes); block i is at byte i * DISK_LOOP_BS of /dev/vda. */
export const DISK_LOOP_BS = 65536;

export function diskLoopScript(after: number): string {
  return `set -e
BS=${DISK_LOOP_BS}
i=0; after=0
while [ $after -lt ${after} ]; do
  i=$((i+1))
  [ $i -le 1000 ] || { echo "TOO-MANY-ITERATIONS"; exit 4; }
  yes "blk $i" | head -c $BS > /tmp/p
  dd if=/tmp/p of=/dev/vda bs=$BS seek=$i count=1 oflag=direct conv=notrunc 2>/dev/null
  want=$(md5sum < /tmp/p)
  got=$(dd if=/dev/vda bs=$BS skip=$i count=1 iflag=direct 2>/dev/null | md5sum)
  [ "$want" = "$got" ] || { echo "MISMATCH $i"; exit 3; }
  if migrated; then after=$((after+1)); echo "ITER $i ok dest"; else echo "ITER $i ok"; fi
done
j=1
while [ $j -le $i ]; do
  want=$(yes "blk $j" | head -c $BS | md5sum)
  got=$(dd if=/dev/vda bs=$BS skip=$j count=1 iflag=direct 2>/dev/null | md5sum)
  [ "$want" = "$got" ] || { echo "VERIFY-MISMATCH $j"; exit 5; }
  j=$((j+1))
done
echo "VERIFIED $i"
`;
}

/** What the loop writes to block `slot`: "blk <slot>\n" repeated, cut at DISK_LOOP_BS (busybox `yes | head -c`). */
export function diskLoopBlock(slot: number): Buffer {
  return Buffer.alloc(DISK_LOOP_BS, Buffer.from(`blk ${slot}\n`));
}

/** QEMU arguments for the vhost-user-blk device the loop writes to (/dev/vda), back-end at `socketPath`. */
export function vhostUserBlkArgs(socketPath: string): string[] {
  return ['-chardev', `socket,id=blk0,path=${socketPath}`, '-device', 'vhost-user-blk-pci,id=vblk0,chardev=blk0,num-queues=1'];
}

// Pieces for guests on a virtio-net device: the QEMU arguments of a vhost-user netdev, the
// image with virtio_net, and shell fragments that bring eth0 up and wait for a peer.
import { NET_MODULES } from './modules.ts';

/** The guest image with virtio_net (test/guest/modules.ts). */
export const NET_IMAGE = { modules: NET_MODULES };

/**
 * The virtio-net-pci options every guest here uses. `vectors=0` (INTx, no MSI-X): QEMU 7.2
 * (Debian 1:7.2+dfsg-7+deb12u18) segfaults in vhost_net_start -> msix_set_vector_notifiers
 * when the driver starts a vhost-user netdev with MSI-X vectors, before it sends the back-end
 * a single ring message (seen under gdb; QEMU 10 starts the same device fine).
 */
export const NET_PCI_OPTIONS = 'vectors=0';

/** -chardev/-netdev/-device for a vhost-user virtio-net device on `socketPath` (MAC in QEMU's config space). */
export function vhostUserNetArgs(id: string, socketPath: string, mac: string, reconnect = false): string[] {
  return [
    '-chardev', `socket,id=${id}c,path=${socketPath}${reconnect ? ',reconnect=1' : ''}`,
    '-netdev', `vhost-user,id=${id},chardev=${id}c`,
    '-device', `virtio-net-pci,netdev=${id},mac=${mac},${NET_PCI_OPTIONS}`,
  ];
}

/**
 * Shell: eth0 up with `ip`/24, IPv6 off (its router and neighbour solicitations would be the
 * only traffic a policy test did not ask for), `wait_for HOST [TRIES]`: ping once a second
 * until HOST answers, or exit 3 naming it, and fd 3: a FIFO held open both ways, for the stdin
 * of a listening `nc -l ... <&3`. Busybox nc shuts its sending half at stdin's end, and the
 * peer's nc exits on that EOF: a listener on </dev/null would cut the sender off mid-stream.
 */
export function netSetup(ip: string): string {
  return `
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6
ip link set lo up
ip addr add ${ip}/24 dev eth0
ip link set eth0 up
mkfifo /tmp/hold
exec 3<>/tmp/hold
wait_for() {
  n=0
  until ping -c 1 -W 1 "$1" >/dev/null 2>&1; do
    n=$((n+1))
    if [ $n -ge "\${2:-120}" ]; then echo "no answer from $1"; exit 3; fi
  done
}
`;
}

declare module 'vhost:device/network@0.2.2' {
  /**
   * How many networks the device was granted.
   */
  export function count(): number;
  /**
   * The MTU of network `index`: the most payload bytes after the 14-byte Ethernet header
   * (a frame on it is 14 to mtu + 18 bytes, the 4 extra for one VLAN tag). A device
   * advertises it (virtio-net's `mtu`) and refuses longer frames from its guest itself: the
   * host fails a device that sends one. Traps for an index >= count().
   */
  export function mtu(index: number): number;
}

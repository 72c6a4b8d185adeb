/** The six bytes of a MAC address written as "52:54:00:00:00:0a" (trusted test input). */
export const mac = (s: string) => Buffer.from(s.split(':').map((h) => parseInt(h, 16)));

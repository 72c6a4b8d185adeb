{
  "targets": [
    {
      "target_name": "vhost_native",
      "sources": [
        "addon.c",
        "src/common.c",
        "src/sock.c",
        "src/fdio.c",
        "src/mapping.c",
        "src/watch.c",
        "src/fs.c",
        "src/fhandle.c",
        "src/proc.c",
        "src/fd_budget.c",
        "src/uring.c",
        "src/peercred.c",
        "src/tap.c",
        "src/checksum.c"
      ],
      "libraries": ["-luring", "-lisal"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}

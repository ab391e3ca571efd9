"""Appends what comes on stdin to LOG, rotating it at MAX_BYTES to LOG.1 .. LOG.BACKUPS: the
output of a worker type's process (supervise/workers_loop.py), rotated without a line lost.

    python -S -I ultrascale_logpipe.py LOG MAX_BYTES BACKUPS

The worker writes into a pipe whose reader is this process, in a session of its own: the
worker's stop signals do not reach it, and a SIGKILLed daemon leaves both running (the next
daemon adopts the worker). It ends when every writer has closed the pipe. Written here rather
than using rotatelogs or svlogd, which need a package on the host (apache2-utils, runit); this
needs only the daemon's Python, started without site (8.5 MB RSS, measured).
"""
import os
import signal
import sys

FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def rotate(path: str, backups: int) -> None:
    if backups == 0:
        os.unlink(path)
        return
    for i in range(backups - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    os.replace(path, f"{path}.1")


def main() -> int:
    path, limit, backups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)   # drain until the writers are gone
    fd = os.open(path, FLAGS, 0o640)
    size, dropped = os.fstat(fd).st_size, 0
    while True:
        data = os.read(0, 65536)
        if not data:
            return 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:   # a full disk: drop this output, never the worker (it would get EPIPE)
            dropped += len(data)
            if dropped == len(data):
                print(f"ultrascale_logpipe: cannot write {path}: {exc}; dropping output until it can",
                      file=sys.stderr)
            continue
        if dropped:
            note = f"[ultrascale_logpipe: {dropped} bytes of output dropped: the log could not be written]\n"
            dropped = 0
            try:
                os.write(fd, note.encode())
            except OSError:
                pass
        size += len(data)
        if size >= limit:
            os.close(fd)
            try:
                rotate(path, backups)
            except OSError as exc:   # keep writing to the file as it is: lose nothing
                print(f"ultrascale_logpipe: cannot rotate {path}: {exc}", file=sys.stderr)
            fd = os.open(path, FLAGS, 0o640)
            size = os.fstat(fd).st_size


if __name__ == "__main__":
    sys.exit(main())

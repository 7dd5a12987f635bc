#!/usr/bin/env python3
"""A client that never reads, against a running server (docs/SECURITY.md,
"Connections"): it sends request lines as fast as the server takes them for
SECONDS, never reading a reply, and samples the server's resident memory
once a second. It reports how much it sent, the server's memory before and
at its peak, when the server stopped taking bytes, and when (if) the server
dropped the connection.

    scripts/non-reader.py PID PORT [SECONDS] [malformed|mixed]

PID is the server's process id, PORT its native port on 127.0.0.1. `mixed`
sends malformed lines, failing logins and token checks in turn; the default
`malformed` sends `x` lines. Standard library only; loopback only.
"""
import socket
import sys
import time


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise SystemExit("no VmRSS for that process")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    mix = sys.argv[4] if len(sys.argv) > 4 else "malformed"
    if mix == "mixed":
        token = "cd" * 32
        lines = [b"x\n", b"aa:bb:cc:dd:ee:ff|nobody@example.com|555|wrong password|AAAAAA\n",
                 f"{token}|aa:bb:cc:dd:ee:ff|get\n".encode()]
        chunk = b"".join(lines) * 1000
    else:
        chunk = b"x\n" * 4096
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.05)
    start = time.monotonic()
    last_progress, sent, dropped = start, 0, None
    before = peak = resident_mib(pid)
    next_sample = start + 1
    while time.monotonic() - start < seconds:
        try:
            sent += sock.send(chunk)
            last_progress = time.monotonic()
        except socket.timeout:
            pass
        except OSError:
            dropped = time.monotonic() - start
            break
        if time.monotonic() >= next_sample:
            peak = max(peak, resident_mib(pid))
            next_sample += 1
    peak = max(peak, resident_mib(pid))
    stalled = last_progress - start
    print(f"sent {sent / 2**20:.1f} MiB in {min(seconds, dropped or seconds):.1f} s; "
          f"server memory {before} MiB before, {peak} MiB at peak; "
          f"it stopped taking bytes at {stalled:.1f} s; "
          + (f"dropped the connection at {dropped:.1f} s ({dropped - stalled:.1f} s later)" if dropped
             else "never dropped the connection"))


if __name__ == "__main__":
    main()

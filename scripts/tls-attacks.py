#!/usr/bin/env python3
"""Attacks on the TLS listener (docs/SECURITY.md, "TLS"): starts BINARY
with RUNTIME (mio or std) on a fresh data folder, with a certificate for
localhost from an authority made here (openssl), then

  hostile      600 connections of TLS fragments, garbage after a real
               ClientHello, and random bytes, some reset; then a TLS token
               check must still be answered;
  non-reader   one TLS client writing pipelined token checks for SECONDS and
               reading nothing: when the server stopped taking bytes, when
               it dropped the client, and its resident memory meanwhile.

    scripts/tls-attacks.py BINARY RUNTIME [SECONDS]

Standard library and openssl only; loopback only; the server is stopped
with SIGTERM at the end (its exit status is reported).
"""
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time

LINE = (("ab" * 32) + "|aa:bb:cc:dd:ee:ff|get\n").encode()


def make_pki(d):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=attack-ca", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
        "-keyout", f"{d}/key.pem", "-out", f"{d}/leaf.csr")
    with open(f"{d}/ext", "w") as ext:
        ext.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", f"{d}/leaf.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext", "-out", f"{d}/cert.pem")


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def tls_check(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as c:
        c.settimeout(10)
        c.sendall(LINE)
        return c.recv(100)


def hostile(port, ca):
    rng = random.Random(7)
    pieces = [b"\x16\x03\x01", b"\x16\x03\x03\x40\x00", b"\x17\x03\x03\xff\xff", b"\x15\x03\x03\x00\x02\x02\x28",
              b"\x14\x03\x03\x00\x01\x01", b"\x00" * 100, b"GET / HTTP/1.1\r\n\r\n", b"\xff" * 5000]
    sent = 0
    for i in range(600):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(0.2)
        if i % 3 == 0:
            # A real ClientHello first, then garbage in the middle of the handshake.
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            hello = ssl.create_default_context(cafile=ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
            try:
                hello.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s.sendall(outgoing.read())
        data = b"".join(rng.choice(pieces) if rng.random() < 0.6 else os.urandom(rng.randint(1, 400))
                        for _ in range(rng.randint(1, 30)))
        try:
            s.sendall(data)
            sent += len(data)
            s.recv(100)
        except OSError:
            pass
        if rng.random() < 0.3:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    return sent


def non_reader(pid, port, ca, seconds):
    ctx = ssl.create_default_context(cafile=ca)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.setblocking(False)
    burst = LINE * 200
    sent, start, before = 0, time.time(), resident_mib(pid)
    peak, stalled, dropped, last = before, None, None, time.time()
    while time.time() - start < seconds:
        try:
            sent += s.send(burst)
            last = time.time()
        except ssl.SSLWantWriteError:
            if stalled is None and time.time() - last > 0.2:
                stalled = last - start
            time.sleep(0.01)
        except OSError:
            dropped = time.time() - start
            break
        peak = max(peak, resident_mib(pid))
    return sent, before, peak, stalled, dropped


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    binary, runtime = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 25
    d = tempfile.mkdtemp()
    make_pki(d)
    env = {"PATH": "/usr/bin:/bin", "TOKENIZER_AUTH_LOG_FORMAT": "json",
           "TOKENIZER_AUTH_TLS_CERT": f"{d}/cert.pem", "TOKENIZER_AUTH_TLS_KEY": f"{d}/key.pem"}
    server = subprocess.Popen([binary, "--data-dir", f"{d}/data", "serve", "--runtime", runtime,
                               "--listen", "127.0.0.1:0", "--legacy-passcode-listen", "127.0.0.1:0",
                               "--legacy-login-listen", "127.0.0.1:0"], env=env, stderr=subprocess.PIPE)
    for line in server.stderr:
        if b'"listening"' in line:
            event = json.loads(line)
            port = int(event.get("fields", event)["native"].rsplit(":", 1)[1])
            break
    else:
        raise SystemExit("the server exited before listening")
    ca = f"{d}/ca.pem"
    sent = hostile(port, ca)
    reply = tls_check(port, ca)
    print(f"{runtime} hostile: {sent:,} bytes on 600 TLS connections; then a TLS token check got {reply!r}; "
          f"RSS {resident_mib(server.pid)} MiB")
    sent, before, peak, stalled, dropped = non_reader(server.pid, port, ca, seconds)
    show = lambda t: "never" if t is None else f"{t:.1f} s"
    print(f"{runtime} non-reader: sent {sent / 2**20:.1f} MiB; server memory {before} MiB before, {peak} MiB at "
          f"peak; it stopped taking bytes at {show(stalled)}; dropped the connection at {show(dropped)}")
    server.terminate()
    status = server.wait(timeout=30)
    print(f"{runtime}: exit {status} on SIGTERM")
    ok = reply == b"unauthorized\n" and dropped is not None and status == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

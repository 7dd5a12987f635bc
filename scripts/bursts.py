#!/usr/bin/env python3
"""Parallel bursts of wrong logins against a fresh server (docs/SECURITY.md,
"Brute-force bounds under concurrency"). For each attack it starts BINARY
on a fresh data folder with the attack's limits, sends the bursts, and
counts the `False` replies: each is one password verification the limits
let through.

    scripts/bursts.py BINARY

Attacks (as first measured against the server):
  per-email   failures_per_email 20, a fresh account, 30 parallel wrong
              logins from 30 addresses (127.0.0.1 to 127.0.0.30)
  lockout     max_consecutive_failures 10 (windows off), three bursts of 32
  default     max_consecutive_failures 100 (windows off), 90 sequential
              failures, then 32 parallel
Standard library only; loopback only; the servers are stopped at the end.
"""
import json
import socket
import subprocess
import sys
import tempfile

LOGIN = b"aa:bb:cc:dd:ee:ff|ada@example.com|5550100|wrong password|AAAAAA\n"


def start(binary, env):
    data = tempfile.mkdtemp()
    subprocess.run([binary, "--data-dir", data, "user", "add", "ada@example.com", "--phone", "5550100",
                    "--password-stdin"], input=b"correct horse battery\n", check=True, stdout=subprocess.DEVNULL)
    env = dict(env, TOKENIZER_AUTH_LOG_FORMAT="json", PATH="/usr/bin:/bin")
    server = subprocess.Popen([binary, "--data-dir", data, "serve", "--listen", "127.0.0.1:0",
                               "--legacy-passcode-listen", "127.0.0.1:0", "--legacy-login-listen", "127.0.0.1:0"],
                              env=env, stderr=subprocess.PIPE)
    for line in server.stderr:
        if b'"listening"' in line:
            event = json.loads(line)
            native = event.get("fields", event)["native"]
            break
    else:
        raise SystemExit("the server exited before listening")
    host, port = native.rsplit(":", 1)
    return server, (host, int(port))


def burst(addr, count, spread=False):
    socks = []
    for i in range(count):
        s = socket.socket()
        if spread:
            s.bind((f"127.0.0.{i + 1}", 0))
        s.connect(addr)
        socks.append(s)
    for s in socks:
        s.sendall(LOGIN)
    replies = [s.makefile().readline().strip() for s in socks]
    for s in socks:
        s.close()
    return sum(r == "False" for r in replies)


def attack(binary, name, env, run):
    server, addr = start(binary, env)
    try:
        checks = run(addr)
    finally:
        server.terminate()
        server.wait()
        # Drain what is left of the log so the pipe is closed cleanly.
        server.stderr.read()
    print(f"{name}: {checks} password verifications")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    off = {"TOKENIZER_AUTH_FAILURES_PER_EMAIL": "0", "TOKENIZER_AUTH_FAILURES_PER_IP": "0"}
    attack(binary, "per-email (limit 20, 30 parallel from 30 addresses)",
           {"TOKENIZER_AUTH_FAILURES_PER_EMAIL": "20"}, lambda addr: burst(addr, 30, spread=True))
    attack(binary, "lockout (at 10, three bursts of 32)",
           dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="10"), lambda addr: sum(burst(addr, 32) for _ in range(3)))
    attack(binary, "default lockout (at 100, 90 sequential then 32 parallel)",
           dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="100"),
           lambda addr: sum(burst(addr, 1) for _ in range(90)) + burst(addr, 32))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Parallel bursts of wrong logins against a fresh server (docs/SECURITY.md,
"Brute-force bounds under concurrency"). For each attack it starts BINARY
on a fresh data folder with the attack's limits, sends the bursts, and
counts the `False` replies: each is one password verification the limits
let through.

    scripts/bursts.py BINARY

Attacks (the first three as first measured against the server):
  per-email   failures_per_email 20, a fresh account, 30 parallel wrong
              logins from 30 addresses (127.0.0.1 to 127.0.0.30)
  lockout     max_consecutive_failures 10 (windows off), three bursts of 32
  old-port    the same, half of each burst on the old login port, whose
              clients are told `False` for a refusal too: so this one
              reports the streak the server stored instead (at most 10)
  default     max_consecutive_failures 100 (windows off), 90 sequential
              failures, then 32 parallel
  per-ip      failures_per_ip 20 (the rest off), 32 parallel wrong logins for
              32 emails, known or not, from one address
  requests    passcode_requests_per_email 5, 32 parallel right passcode
              requests: passcodes mailed
  guesses     one live passcode, 32 parallel logins with the right password
              and wrong passcodes: guesses counted against it (at most 5),
              and whether the right passcode still works after (it must not)
  one-code    one live passcode, 50 parallel right logins: tokens issued
Standard library only; loopback only; the servers are stopped at the end.
"""
import json
import socket
import subprocess
import sys
import tempfile

import glob
import re
import sqlite3

MAC = "aa:bb:cc:dd:ee:ff"
PASSWORD = "correct horse battery"
LOGIN = f"{MAC}|ada@example.com|5550100|wrong password|AAAAAA\n".encode()


def start(binary, env, data=None):
    data = data or tempfile.mkdtemp()
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
    legacy = event.get("fields", event)["legacy_login"].rsplit(":", 1)
    server.data, server.legacy = data, (legacy[0], int(legacy[1]))
    return server, (host, int(port))


def ask_all(addr, lines, spread=False):
    """Sends each line on a connection of its own, all before any reply is
    read; returns the replies in order."""
    socks = []
    for i, _ in enumerate(lines):
        s = socket.socket()
        if spread:
            s.bind((f"127.0.0.{i + 1}", 0))
        s.connect(addr)
        socks.append(s)
    for s, line in zip(socks, lines):
        s.sendall(line)
    replies = [s.makefile().readline().strip() for s in socks]
    for s in socks:
        s.close()
    return replies


def burst(addr, count, spread=False):
    return sum(r == "False" for r in ask_all(addr, [LOGIN] * count, spread))


def legacy_burst(addr, count):
    """Wrong logins on the old login port: one unterminated request each,
    a pickled reply."""
    socks = [socket.create_connection(addr) for _ in range(count)]
    for s in socks:
        s.sendall(LOGIN.rstrip(b"\n"))
    replies = [s.recv(500) for s in socks]
    for s in socks:
        s.close()
    return sum(r.endswith(b"False\x94.") for r in replies)


def stored_streak(server):
    db = sqlite3.connect(f"file:{server.data}/op_passcodes.db?mode=ro", uri=True)
    row = db.execute("SELECT count FROM counters WHERE key = 'streak/ada@example.com'").fetchone()
    return row[0] if row else 0


def passcode_line(email="ada@example.com"):
    return f"require_passcode|{MAC}|{PASSWORD}|5550100|{email}\n".encode()


def live_passcode(server, addr):
    assert ask_all(addr, [passcode_line()]) == ["Passcode is sent"]
    newest = sorted(glob.glob(f"{server.data}/outbox/*.eml"))[-1]
    return re.search(r" is: ([A-Z0-9]{6})", open(newest).read()).group(1)


def login_line(code):
    return f"{MAC}|ada@example.com|5550100|{PASSWORD}|{code}\n".encode()


def guesses(server, addr):
    code = live_passcode(server, addr)
    wrong = "ZZZZZ9" if code != "ZZZZZ9" else "ZZZZZ8"
    ask_all(addr, [login_line(wrong)] * 32)
    db = sqlite3.connect(f"file:{server.data}/op_passcodes.db?mode=ro", uri=True)
    rows = db.execute("SELECT * FROM passcode_table").fetchall()
    columns = [c[1] for c in db.execute("PRAGMA table_info(passcode_table)")]
    counted = [r[columns.index("attempts")] for r in rows] if "attempts" in columns else ["?"]
    after = ask_all(addr, [login_line(code)])[0]
    works = "works" if after.startswith("\U0001d504") else "refused"
    return f"{counted or ['row gone']} guesses counted; the right passcode after: {works}"


def one_code(server, addr):
    code = live_passcode(server, addr)
    replies = ask_all(addr, [login_line(code)] * 50)
    return f"{sum(r.startswith(chr(0x1D504)) for r in replies)} tokens"


def attack(binary, name, env, run, unit="password verifications"):
    server, addr = start(binary, env)
    server.addr = addr
    try:
        checks = run(server)
    finally:
        server.terminate()
        server.wait()
        # Drain what is left of the log so the pipe is closed cleanly.
        server.stderr.read()
    print(f"{name}: {checks} {unit}".rstrip())


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    off = {"TOKENIZER_AUTH_FAILURES_PER_EMAIL": "0", "TOKENIZER_AUTH_FAILURES_PER_IP": "0"}
    all_off = dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="0")
    attack(binary, "per-email (limit 20, 30 parallel from 30 addresses)",
           {"TOKENIZER_AUTH_FAILURES_PER_EMAIL": "20"}, lambda s: burst(s.addr, 30, spread=True))
    attack(binary, "lockout (at 10, three bursts of 32)",
           dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="10"), lambda s: sum(burst(s.addr, 32) for _ in range(3)))
    attack(binary, "old-port (lockout at 10, three bursts of 16 native + 16 old port)",
           dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="10"),
           lambda s: [burst(s.addr, 16) + legacy_burst(s.legacy, 16) for _ in range(3)] and stored_streak(s),
           "failures in the stored streak")
    attack(binary, "default lockout (at 100, 90 sequential then 32 parallel)",
           dict(off, TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES="100"),
           lambda s: sum(burst(s.addr, 1) for _ in range(90)) + burst(s.addr, 32))
    emails = [f"{MAC}|user{i}@example.com|5550100|wrong password|AAAAAA\n".encode() for i in range(31)]
    attack(binary, "per-ip (limit 20, 32 parallel for 32 emails from one address)",
           dict(all_off, TOKENIZER_AUTH_FAILURES_PER_IP="20"),
           lambda s: sum(r == "False" for r in ask_all(s.addr, [LOGIN] + emails)))
    attack(binary, "requests (5 per email, 32 parallel)", dict(all_off, TOKENIZER_AUTH_PASSCODE_REQUESTS_PER_EMAIL="5"),
           lambda s: sum(r == "Passcode is sent" for r in ask_all(s.addr, [passcode_line()] * 32)), "passcodes mailed")
    attack(binary, "guesses (32 parallel wrong passcodes)", all_off, lambda s: guesses(s, s.addr), "")
    attack(binary, "one-code (50 parallel right logins)", all_off, lambda s: one_code(s, s.addr), "")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Hostile bytes on every listener (docs/SECURITY.md): starts BINARY on a
fresh data folder with RUNTIME (mio or std), sends 400 connections of random
bytes and protocol fragments (NULs, invalid UTF-8, pickle headers, 5 KB
runs) to each of the three listeners, half-closing or resetting some, then
checks that the server is alive, answers a token check, and exits 0 on
SIGTERM.

    scripts/hostile-bytes.py BINARY RUNTIME [proxy]

With `proxy`, the server takes PROXY protocol headers from 127.0.0.1
(proxy_protocol_from), so every hostile connection comes from a "balancer"
and its first bytes go through the header decoder; the pieces include
header fragments either way.

Standard library only; loopback only; a fixed seed.
"""
import os, random, socket, subprocess, sys, tempfile, time, json
binary=sys.argv[1]; rt=sys.argv[2]; proxy=len(sys.argv)>3 and sys.argv[3]=="proxy"
env={"TOKENIZER_AUTH_LOG_FORMAT":"json","PATH":"/usr/bin:/bin"}
# A server on PostgreSQL when the caller names one.
env.update({k:v for k,v in os.environ.items() if k in ("TOKENIZER_AUTH_STORE_URL","TOKENIZER_AUTH_SERVER_KEY")})
if proxy: env["TOKENIZER_AUTH_PROXY_PROTOCOL_FROM"]="127.0.0.1"
header=b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2\r\n" if proxy else b""
d=tempfile.mkdtemp()
subprocess.run([binary,"--data-dir",d,"user","add","ada@example.com","--phone","5550100","--password-stdin"],input=b"correct horse battery\n",check=True,stdout=subprocess.DEVNULL)
p=subprocess.Popen([binary,"--data-dir",d,"serve","--runtime",rt,"--listen","127.0.0.1:0","--legacy-passcode-listen","127.0.0.1:0","--legacy-login-listen","127.0.0.1:0"],env=env,stderr=subprocess.PIPE)
for line in p.stderr:
    if b'"listening"' in line:
        ev=json.loads(line); f=ev.get("fields",ev); break
import threading; threading.Thread(target=lambda:[None for _ in p.stderr],daemon=True).start()
addrs={k:(f[k].rsplit(":",1)[0],int(f[k].rsplit(":",1)[1])) for k in ("native","legacy_passcode","legacy_login")}
rng=random.Random(7)
pieces=[b"|",b"\n",b"\r",b"\r\n",b"\x00",b"\xff\xfe",b"require_passcode",b"aa:bb:cc:dd:ee:ff","\u202e\U0001f600".encode(),b"\x80\x04\x95",b"a"*5000,b"ab"*32,b"PROXY ",b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",b"PROXY TCP6 ",b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c",b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"]
sent=0
for name,addr in addrs.items():
    for i in range(400):
        s=socket.create_connection(addr); s.settimeout(0.2)
        data=b"".join(rng.choice(pieces) if rng.random()<0.7 else os.urandom(rng.randint(1,300)) for _ in range(rng.randint(1,40)))
        try:
            s.sendall(data); sent+=len(data)
            if rng.random()<0.3: s.shutdown(socket.SHUT_WR)
            try: s.recv(4096)
            except Exception: pass
        except Exception: pass
        if rng.random()<0.5: s.close()
        else: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"); s.close()
time.sleep(0.5)
ok = p.poll() is None
c=socket.create_connection(addrs["native"]); c.sendall(header+("cd"*32+"|aa:bb:cc:dd:ee:ff|get\n").encode()); r=c.makefile().readline().strip()
rss=[l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]
p.terminate(); code=p.wait()
print(f"{rt}: {sent} hostile bytes on 1,200 connections over the three listeners; alive {ok}; then a token check got {r!r}; RSS {int(rss)//1024} MiB; exit {code} on SIGTERM")

"""The old Python client, as docs/PROTOCOL.md ("Legacy protocol") describes
it: connect, one unterminated write, one read into a 500-byte buffer,
pickle.loads.

Usage: legacy_client.py HOST PORT REQUEST   (prints the unpickled reply)
"""
import pickle
import socket
import sys

host, port, request = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with socket.create_connection((host, port), timeout=30) as s:
    s.sendall(request.encode())
    reply = s.recv(500)
print(pickle.loads(reply))

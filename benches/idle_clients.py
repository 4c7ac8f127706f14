#!/usr/bin/env python3
"""Opens N client connections to a PostgreSQL server or pooler, logs each one
in (SCRAM-SHA-256, md5 or cleartext password) until ReadyForQuery, and holds
them all idle until its standard input closes.

Used by benches/load.sh to measure a pooler's memory per idle client. Python's
standard library only: asyncio and the raw v3 protocol, so that ten thousand
connections fit in one small process.

    idle_clients.py --port P --user U --password W --db D -n 10000

Prints one line when every login has finished:

    ready ok=9998 failed=2 seconds=4.21

then waits for EOF on stdin, closes every connection and exits (status 0 if
all N logged in, 1 otherwise). Errors of the first failed logins go to stderr.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import resource
import struct
import sys
import time

# SCRAM's PBKDF2 depends only on the password, the salt and the iteration
# count; a pooler hands out the same salt every time, so derive once.
_SALTED = {}


def _msg(kind, payload):
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _startup(user, db):
    body = struct.pack("!i", 196608)  # protocol 3.0
    for k, v in (("user", user), ("database", db), ("application_name", "idle_clients")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


class LoginError(Exception):
    pass


async def _read_message(reader):
    head = await reader.readexactly(5)
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    if length < 4 or length > 1 << 20:
        raise LoginError(f"bad message length {length} for {kind!r}")
    return kind, await reader.readexactly(length - 4)


def _error_text(payload):
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'S', 'ERROR')} {fields.get(b'C', '')}: {fields.get(b'M', '')}"


async def login(host, port, user, password, db):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_startup(user, db))
        scram = None
        while True:
            kind, body = await _read_message(reader)
            if kind == b"E":
                raise LoginError(_error_text(body))
            if kind == b"Z":
                return reader, writer
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            code = struct.unpack("!i", body[:4])[0]
            data = body[4:]
            if code == 0:  # AuthenticationOk
                continue
            if code == 3:  # cleartext
                writer.write(_msg(b"p", password.encode() + b"\0"))
            elif code == 5:  # md5
                inner = hashlib.md5(password.encode() + user.encode()).hexdigest().encode()
                writer.write(_msg(b"p", b"md5" + hashlib.md5(inner + data[:4]).hexdigest().encode() + b"\0"))
            elif code == 10:  # SASL: mechanisms offered
                if b"SCRAM-SHA-256\0" not in data:
                    raise LoginError(f"no SCRAM-SHA-256 among {data!r}")
                nonce = base64.b64encode(os.urandom(18)).decode()
                first_bare = f"n=,r={nonce}"
                first = ("n,," + first_bare).encode()
                writer.write(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
                scram = (nonce, first_bare)
            elif code == 11:  # SASLContinue: server-first-message
                if scram is None:
                    raise LoginError("SASLContinue before SASL")
                nonce, first_bare = scram
                server_first = data.decode()
                attrs = dict(a.split("=", 1) for a in server_first.split(","))
                if not attrs["r"].startswith(nonce):
                    raise LoginError("server nonce does not extend ours")
                salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
                key = (salt, iterations)
                if key not in _SALTED:
                    _SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
                salted = _SALTED[key]
                client_key = hmac.digest(salted, b"Client Key", "sha256")
                stored_key = hashlib.sha256(client_key).digest()
                final_bare = f"c=biws,r={attrs['r']}"
                auth_message = f"{first_bare},{server_first},{final_bare}".encode()
                signature = hmac.digest(stored_key, auth_message, "sha256")
                proof = bytes(a ^ b for a, b in zip(client_key, signature))
                writer.write(_msg(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode()))
                server_key = hmac.digest(salted, b"Server Key", "sha256")
                scram = (hmac.digest(server_key, auth_message, "sha256"),)
            elif code == 12:  # SASLFinal
                if scram is None or len(scram) != 1:
                    raise LoginError("SASLFinal out of order")
                attrs = dict(a.split("=", 1) for a in data.decode().split(","))
                if base64.b64decode(attrs.get("v", "")) != scram[0]:
                    raise LoginError("wrong server signature")
            else:
                raise LoginError(f"unsupported authentication request {code}")
            await writer.drain()
    except BaseException:
        writer.close()
        raise


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default=os.environ.get("PGPASSWORD", ""))
    p.add_argument("--db", required=True)
    p.add_argument("-n", type=int, default=10000, help="connections to open")
    p.add_argument("--concurrency", type=int, default=64, help="logins under way at once")
    p.add_argument("--timeout", type=float, default=60, help="seconds per login")
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        top = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
        if top < want:
            print(f"idle_clients: open files limit {top} < {want}; some logins will fail", file=sys.stderr)

    held, errors = [], []
    gate = asyncio.Semaphore(a.concurrency)

    async def one():
        async with gate:
            try:
                held.append(await asyncio.wait_for(login(a.host, a.port, a.user, a.password, a.db), a.timeout))
            except Exception as e:  # noqa: BLE001 -- every failure is counted and reported
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(a.n)))
    seconds = time.monotonic() - t0
    for e in errors[:5]:
        print(f"idle_clients: login failed: {e}", file=sys.stderr)
    print(f"ready ok={len(held)} failed={len(errors)} seconds={seconds:.2f}", flush=True)

    # Hold every connection until stdin closes. A pooler says nothing to an
    # idle client, so nothing needs reading meanwhile.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    for _, writer in held:
        writer.close()
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

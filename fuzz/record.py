#!/usr/bin/env python3
"""Records real client sessions and writes the fuzz seeds in fuzz/seeds/.

Starts a throwaway PostgreSQL (initdb into a temp dir, 127.0.0.1 on a free
port, SCRAM; as `nobody` when run as root), puts a TCP relay in front of it
that keeps both byte streams of every connection, runs psql, pgbench
(-M simple, extended, prepared) and a tokio-postgres session
(examples/driver.rs) through the relay, splits the streams into messages
and writes seeds per target. Hand-written seeds for the text parsers
(userlist, URLs, TOML) are added alongside.

    python3 fuzz/record.py            # rewrites fuzz/seeds/
"""
import hashlib, os, re, shutil, socket, struct, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
PASSWORD = "record-secret"
# The fuzz harnesses' SCRAM secret (src/scram.rs): salt and iterations.
FUZZ_SALT = "cGdkeW5vLWZ1enotc2FsdA=="
FUZZ_ITERATIONS = "16"
MAX_SEED = 2048
MAX_PER_TARGET = 60


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg_bin(tool):
    found = shutil.which(tool)
    if found:
        return found
    dirs = sorted(d for d in os.listdir("/usr/lib/postgresql"))
    return f"/usr/lib/postgresql/{dirs[-1]}/bin/{tool}"


def as_pg(cmd):
    return (["runuser", "-u", "nobody", "--"] + cmd) if os.getuid() == 0 else cmd


class Relay(threading.Thread):
    """Accepts on 127.0.0.1, relays to PostgreSQL, keeps both streams."""

    def __init__(self, pg_port):
        super().__init__(daemon=True)
        self.pg_port = pg_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.sessions = []  # [client_bytes, backend_bytes]
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            backend = socket.create_connection(("127.0.0.1", self.pg_port))
            session = [bytearray(), bytearray()]
            with self.lock:
                self.sessions.append(session)
            for src, dst, buf in ((client, backend, session[0]), (backend, client, session[1])):
                threading.Thread(target=self.pump, args=(src, dst, buf), daemon=True).start()

    @staticmethod
    def pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (dst,):
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def split_client(stream):
    """The startup packet(s) and the tagged messages after them."""
    startups, i = [], 0
    while i + 8 <= len(stream):
        n = struct.unpack(">i", stream[i:i + 4])[0]
        code = struct.unpack(">i", stream[i + 4:i + 8])[0]
        startups.append(bytes(stream[i:i + n]))
        i += n
        if code == 196608:
            break
    return startups, split_tagged(stream[i:])


def split_tagged(stream):
    msgs, i = [], 0
    while i + 5 <= len(stream):
        n = struct.unpack(">i", stream[i + 1:i + 5])[0]
        msgs.append(bytes(stream[i:i + 1 + n]))
        i += 1 + n
    return msgs


def windows(msgs, size=MAX_SEED):
    """Runs of consecutive messages of at most `size` bytes."""
    out, cur = [], b""
    for m in msgs:
        if len(m) > size:
            m = m[:size]
        if cur and len(cur) + len(m) > size:
            out.append(cur)
            cur = b""
        cur += m
    if cur:
        out.append(cur)
    return out


class Seeds:
    def __init__(self):
        self.by_target = {}

    def add(self, target, data):
        self.by_target.setdefault(target, {})[hashlib.sha1(data).hexdigest()[:16]] = data

    def write(self):
        if os.path.isdir(SEEDS):
            shutil.rmtree(SEEDS)
        for target, seeds in self.by_target.items():
            d = os.path.join(SEEDS, target)
            os.makedirs(d)
            # Keep a spread: the smallest ones and some of every size.
            items = sorted(seeds.items(), key=lambda kv: (len(kv[1]), kv[0]))
            if len(items) > MAX_PER_TARGET:
                step = len(items) / MAX_PER_TARGET
                items = [items[int(k * step)] for k in range(MAX_PER_TARGET)]
            for name, data in items:
                with open(os.path.join(d, name), "wb") as f:
                    f.write(data)
            print(f"{target}: {len(items)} seeds, {sum(len(v) for _, v in items)} bytes")


def relay_seed(flags, sent, received, size=MAX_SEED):
    """A `relay` target input: each request (client messages up to a Query,
    Sync or Terminate) then the backend's messages up to its ReadyForQuery,
    in chunks of at most 128 bytes with a direction bit (src/relay/fuzzing.rs)."""
    out = bytearray([flags])

    def put(direction, data):
        for i in range(0, len(data), 128):
            chunk = data[i:i + 128]
            out.append(((len(chunk) - 1) << 1) | direction)
            out.extend(chunk)

    replies = iter(received)
    request = b""
    for m in sent:
        request += m
        if m[:1] in (b"Q", b"S", b"X") and len(out) < size:
            put(0, request)
            request = b""
            reply = b""
            for r in replies:
                reply += r
                if r[:1] == b"Z":
                    break
            put(1, reply)
    if request:
        put(0, request)
    return bytes(out[:size])


def scram_seeds(seeds, client_msgs, backend_msgs):
    """SASL messages of a SCRAM login, nonces made placeholders (\\x01)."""
    sasl = [m[5:] for m in client_msgs if m[:1] == b"p"]
    auth = [m[5:] for m in backend_msgs if m[:1] == b"R"]
    cont = [a[4:] for a in auth if a[:4] == struct.pack(">i", 11)]
    final = [a[4:] for a in auth if a[:4] == struct.pack(">i", 12)]
    if len(sasl) < 2 or not cont:
        return
    mech, rest = sasl[0].split(b"\0", 1)
    client_first, client_final = rest[4:], sasl[1]
    client_nonce = re.search(rb"r=([^,]*)", client_first).group(1)
    server_nonce = re.search(rb"r=([^,]*)", cont[0]).group(1)
    # Server side: what a client sends, its final echoing our nonce.
    final_tpl = client_final.replace(b"r=" + server_nonce, b"r=\x01")
    for mode in (0, 1):
        seeds.add("scram_server", bytes([mode]) + client_first + b"\0" + final_tpl)
    # Client side: what a server sends, its nonce extending ours, our secret.
    first = cont[0].replace(b"r=" + client_nonce, b"r=\x01")
    first = re.sub(rb"s=[^,]*", b"s=" + FUZZ_SALT.encode(), first)
    first = re.sub(rb"i=[0-9]*", b"i=" + FUZZ_ITERATIONS.encode(), first)
    for mode in (0, 1, 2):
        seeds.add("scram_client", bytes([mode]) + first + b"\0" + (final[0] if final else b""))


def hand_written(seeds):
    for mode in (4, 5, 12, 13, 21, 29):
        seeds.add("scram_server", bytes([mode]) + bytes(range(1, 33)))
    seeds.add("scram_server", b"\x02p=tls-server-end-point,,n=,r=abc\0c=\x01,r=\x01,p=AAAA")
    md5 = "md5" + hashlib.md5(b"pwbob").hexdigest()
    users = [
        '"alice" "pw1"\n',
        f'"bob" "{md5}"\n; comment\n',
        '"car""ol" "p""w" extra\n"dave" ""\n',
        '"eve" "SCRAM-SHA-256$4096:c2FsdA==$' + "A" * 43 + "=:" + "B" * 43 + '="\n',
        "   \"  spaced\"   \"x\"\r\n\"\u00e9t\u00e9\" \"\u00fcber\"\n",
    ]
    for u in users:
        seeds.add("userlist", u.encode())
    urls = [
        "postgres://u%40x:p%3Ass@ec2-1-2-3-4.compute-1.amazonaws.com:5433/d1?sslmode=prefer",
        "postgresql:///db?host=/var/run/postgresql",
        "postgres://[::1]:6000/x?application_name=a&options=-c%20x%3D1",
        "host=127.0.0.1 port = 6000 dbname='my db' user=bob password=it\\'s",
        "host=/tmp port=5432 sslmode=verify-full channel_binding=require",
        "postgres://app:secret@127.0.0.1/app?sslrootcert=/x.pem&sslcert=/c&sslkey=/k",
    ]
    for u in urls:
        seeds.add("upstream_url", u.encode())
    configs = [
        'listen = "127.0.0.1:6432"\npool_mode = "transaction"\ndefault_pool_size = 10\n'
        'auth_file = "/etc/pgdyno/userlist.txt"\n\n[databases]\n'
        'app = "postgres://app:secret@10.0.0.5:5432/app"\n'
        'reports = { url = "postgres://app:secret@10.0.0.6:5432/app", pool_size = 3, pool_mode = "session" }\n',
        'upstream = "host=/tmp dbname=x"\nquery_wait_timeout = "1.5min"\nserver_lifetime = 0\n'
        'client_idle_timeout = "250ms"\nlog_format = "json"\nlog_connections = "off"\n',
        'default_pool_size = "auto"\nfleet_size = 3\npool_size_headroom = 2\nmax_packet_size = 1024\n'
        'ignore_startup_parameters = ["extra_float_digits", "search_path"]\n',
        'client_tls_sslmode = "verify-full"\nclient_tls_cert_pem = "x"\nclient_tls_key_file = "/k"\n'
        'client_tls_ca_pem = "y"\nclient_tls_protocols = "tlsv1.3"\nserver_tls_sslmode = "require"\n',
        '[databases.a]\nurl = "postgres://h/a"\nmin_pool_size = 1\nreserve_pool_size = 2\nmax_db_connections = 4\n',
        'listen = "*:6432"\nmetrics_listen = "127.0.0.1:9187"\nauth_type = "md5"\nadmin_users = "a, b"\n',
    ]
    for c in configs:
        seeds.add("config_toml", c.encode())


def main():
    tmp = tempfile.mkdtemp(prefix="pgdyno-record.")
    os.chmod(tmp, 0o755)
    data = os.path.join(tmp, "data")
    with open(os.path.join(tmp, "pw"), "w") as f:
        f.write(PASSWORD + "\n")
    os.mkdir(data)
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "nobody", tmp], check=True)
    pg_port = free_port()
    subprocess.run(as_pg([pg_bin("initdb"), "-D", data, "-U", "app", "--auth=scram-sha-256",
                          f"--pwfile={tmp}/pw"]), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_pg([pg_bin("pg_ctl"), "-D", data, "-l", f"{tmp}/pg.log", "-w", "-o",
                          f"-p {pg_port} -c listen_addresses=127.0.0.1 -k {tmp} -c fsync=off",
                          "start"]), check=True, stdout=subprocess.DEVNULL)
    try:
        relay = Relay(pg_port)
        relay.start()
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable")
        conn = ["-h", "127.0.0.1", "-p", str(relay.port), "-U", "app"]
        run = lambda cmd: subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        # psql with COPY FROM STDIN needs input: feed it.
        subprocess.run([pg_bin("psql")] + conn + ["postgres", "-v", "ON_ERROR_STOP=0"],
                       env=env, input=(
                           "SELECT 1; SHOW server_version;\n"
                           "BEGIN; SET LOCAL work_mem='8MB'; COMMIT;\n"
                           "SELECT * FROM nonexistent;\n"
                           "PREPARE s AS SELECT $1::int; EXECUTE s(1); DEALLOCATE s;\n"
                           "SET search_path = public; RESET ALL; DISCARD ALL;\n"
                           "SET TimeZone = 'UTC';\n"
                           "COPY (SELECT g FROM generate_series(1,20) g) TO STDOUT;\n"
                           "CREATE TEMP TABLE c (a int);\nCOPY c FROM STDIN;\n1\n2\n\\.\n"
                           "LISTEN ch; NOTIFY ch, 'hi';\n"
                           "DO $$BEGIN RAISE NOTICE 'note'; END$$;\n"
                           "SELECT $1::int \\bind 5 \\g\n"
                       ).encode(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        run([pg_bin("pgbench")] + conn + ["-i", "-s", "1", "-q", "postgres"])
        for mode in ("simple", "extended", "prepared"):
            run([pg_bin("pgbench")] + conn + ["-M", mode, "-c", "2", "-t", "10", "postgres"])
        driver = subprocess.run(
            ["cargo", "run", "--quiet", "--example", "driver", "--",
             f"host=127.0.0.1 port={relay.port} user=app password={PASSWORD} dbname=postgres"],
            cwd=HERE, env=env)
        if driver.returncode != 0:
            print("record: the tokio-postgres driver failed", file=sys.stderr)
        time.sleep(0.5)
    finally:
        subprocess.run(as_pg([pg_bin("pg_ctl"), "-D", data, "-m", "fast", "stop"]),
                       stdout=subprocess.DEVNULL)
    seeds = Seeds()
    with relay.lock:
        sessions = [(bytes(c), bytes(b)) for c, b in relay.sessions]
    for client, backend in sessions:
        startups, client_msgs = split_client(client)
        for s in startups:
            seeds.add("startup", s)
        backend_msgs = split_tagged(backend)
        scram_seeds(seeds, client_msgs, backend_msgs)
        # Skip the login; the message streams of the session proper.
        after = next((i + 1 for i, m in enumerate(backend_msgs) if m[:1] == b"Z"), 0)
        for k, w in enumerate(windows(backend_msgs[after:])):
            seeds.add("backend_messages", bytes([k % 7 + 1, 0]) + w)
        seeds.add("backend_messages", bytes([3, 0]) + b"".join(backend_msgs[:after])[:MAX_SEED])
        sent = [m for m in client_msgs if m[:1] != b"p"]
        for k, w in enumerate(windows(sent)):
            seeds.add("client_messages", bytes([k % 7 + 1, k % 2]) + w)
        for flags in (1, 3):
            seeds.add("relay", relay_seed(flags, sent, backend_msgs[after:]))
    hand_written(seeds)
    seeds.write()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

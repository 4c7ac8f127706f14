#!/usr/bin/env python3
"""Checks docker-compose.yml and the Dockerfile without a Docker engine.

    python3 tests/compose_check.py        (needs PyYAML: pip install pyyaml)

Checks what `docker compose up` relies on: the three services, their images
or build, ports, the depends_on order (with health conditions), that every
pgdyno flag in the compose file is a real pgdyno setting (read from
src/config/settings.rs), and that the pgbench load goes through pgdyno rather
than straight to PostgreSQL. Also the Dockerfile's shape: a build stage, a
debian:bookworm-slim final stage, a non-root user, ENTRYPOINT ["pgdyno"].
Exits 1 listing every problem found.
"""

import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    import yaml
except ImportError:
    sys.exit("compose_check: PyYAML is needed (python3 -m pip install pyyaml)")

problems = []
checks = 0


def check(ok, message):
    global checks
    checks += 1
    if not ok:
        problems.append(message)
    return ok


def words(command):
    """A compose command (string or list) as argv words; `sh -c SCRIPT` is
    split into the script's words too."""
    if command is None:
        return []
    argv = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh") and argv[1] == "-c":
        return argv[:2] + shlex.split(argv[2])
    return argv


def flags(argv):
    """`--key value` and `--key=value` pairs, in order."""
    out = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            if "=" in word:
                key, value = word[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = word[2:], argv[i + 1]
                i += 1
            else:
                key, value = word[2:], "true"
            out.append((key, value))
        i += 1
    return out


def settings():
    """pgdyno's setting names, from the one table that defines them."""
    text = (ROOT / "src/config/settings.rs").read_text()
    names = set(re.findall(r'^\s*s\("([a-z_]+)"', text, re.MULTILINE))
    check(len(names) > 10, "could not read the settings from src/config/settings.rs")
    return names | {"pool_size", "config"}


def depends(service, name, condition):
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        check(False, f"depends_on {name} should say condition: {condition}")
        return
    check(name in deps, f"must depend on {name}")
    check(
        (deps.get(name) or {}).get("condition") == condition,
        f"depends_on {name} should have condition: {condition}",
    )


def published(service, port):
    """Whether the service publishes container port `port` (any host address)."""
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if str(entry.get("target")) == str(port):
                return True
        elif str(entry).split(":")[-1].split("/")[0] == str(port):
            return True
    return False


def check_postgres(svc):
    check(str(svc.get("image", "")).startswith("postgres:16"), "postgres: image postgres:16")
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    check(env.get("POSTGRES_PASSWORD"), "postgres: POSTGRES_PASSWORD must be set")
    test = (svc.get("healthcheck") or {}).get("test")
    check("pg_isready" in json.dumps(test), "postgres: healthcheck must run pg_isready")
    return env


def check_pgdyno(svc, pg_env, known):
    build = svc.get("build")
    context = build.get("context") if isinstance(build, dict) else build
    check(context in (".", "./"), "pgdyno: build: . (this repository's Dockerfile)")
    got = dict(flags(words(svc.get("command"))))
    for key in got:
        check(key.replace("-", "_") in known, f"pgdyno: --{key} is not a pgdyno setting")
    check(got.get("listen") == "0.0.0.0:6432", "pgdyno: --listen 0.0.0.0:6432")
    check(got.get("pool-mode") == "transaction", "pgdyno: --pool-mode transaction")
    check(got.get("pool-size") == "10", "pgdyno: --pool-size 10")
    check(got.get("metrics-listen") == "0.0.0.0:9187", "pgdyno: --metrics-listen 0.0.0.0:9187")
    upstream = got.get("upstream", "")
    m = re.match(r"postgres(?:ql)?://([^:@/]+):([^@/]*)@([^:/]+):(\d+)/(\w+)", upstream)
    if check(m, f"pgdyno: --upstream postgres://user:password@postgres:5432/db, got {upstream!r}"):
        user, password, host, port, db = m.groups()
        check(host == "postgres" and port == "5432", "pgdyno: upstream must be postgres:5432")
        check(user == pg_env.get("POSTGRES_USER", "postgres"), "pgdyno: upstream user != POSTGRES_USER")
        check(password == pg_env.get("POSTGRES_PASSWORD"), "pgdyno: upstream password != POSTGRES_PASSWORD")
        check(db == pg_env.get("POSTGRES_DB", user), "pgdyno: upstream database != POSTGRES_DB")
    for port in (6432, 9187):
        check(published(svc, port), f"pgdyno: port {port} must be published")
    depends(svc, "postgres", "service_healthy")


def check_pgbench(svc):
    check(str(svc.get("image", "")).startswith("postgres:16"), "pgbench: image postgres:16")
    argv = words(svc.get("command"))
    runs = [i for i, w in enumerate(argv) if w == "pgbench"]
    check(len(runs) == 2, f"pgbench: expected `pgbench -i` then a timed run, got {argv}")
    env = svc.get("environment") or {}
    for n, start in enumerate(runs):
        end = runs[n + 1] if n + 1 < len(runs) else len(argv)
        run = argv[start:end]
        host = option(run, "-h", "--host") or env.get("PGHOST")
        port = option(run, "-p", "--port") or env.get("PGPORT")
        check(host == "pgdyno", f"pgbench: {' '.join(run)} must target host pgdyno")
        check(str(port) == "6432", f"pgbench: {' '.join(run)} must target port 6432")
    if len(runs) == 2:
        first, second = argv[runs[0] : runs[1]], argv[runs[1] :]
        check("-i" in first, "pgbench: the first run must be `pgbench -i`")
        check(option(second, "-c") == "20", "pgbench: the load must be -c 20")
        check(option(second, "-T") == "60", "pgbench: the load must be -T 60")
    depends(svc, "pgdyno", "service_healthy")


def option(argv, *names):
    for i, w in enumerate(argv):
        for name in names:
            if w == name and i + 1 < len(argv):
                return argv[i + 1]
            if name.startswith("--") and w.startswith(name + "="):
                return w.split("=", 1)[1]
            if not name.startswith("--") and w.startswith(name) and len(w) > len(name):
                return w[len(name) :]
    return None


def check_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE | re.IGNORECASE)
    check(len(stages) >= 2, "Dockerfile: a build stage and a final stage")
    if stages:
        check(stages[-1][0] == "debian:bookworm-slim", "Dockerfile: final stage FROM debian:bookworm-slim")
    final = re.split(r"^FROM\s", text, flags=re.MULTILINE | re.IGNORECASE)[-1]
    check("cargo build --release" in text, "Dockerfile: builds with cargo build --release")
    check("ca-certificates" in final, "Dockerfile: final image installs ca-certificates")
    user = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    check(user and user[-1].split(":")[0] not in ("root", "0"), "Dockerfile: final stage runs as a non-root USER")
    check(re.search(r'^ENTRYPOINT\s+\["pgdyno"\]', final, re.MULTILINE), 'Dockerfile: ENTRYPOINT ["pgdyno"]')
    check(re.search(r"^COPY\s+--from=", final, re.MULTILINE), "Dockerfile: final stage copies the binary from the build stage")


def main():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = (compose or {}).get("services") or {}
    for name in ("postgres", "pgdyno", "pgbench"):
        check(name in services, f"service {name} is missing")
    if not problems:
        pg_env = check_postgres(services["postgres"])
        check_pgdyno(services["pgdyno"], pg_env, settings())
        check_pgbench(services["pgbench"])
    check_dockerfile()
    if problems:
        print("compose_check: FAILED", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"compose_check: ok ({checks} checks)")


if __name__ == "__main__":
    main()

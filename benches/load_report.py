#!/usr/bin/env python3
"""The report of benches/load.sh: reads its runs (one row per measured pgbench
run), its idle-client rows and a key=value file about the machine and the
command, and writes

  --csv   the medians per scenario, TLS setting and target, with the ratios
          against PgBouncer and direct
  --md    a Markdown report: machine, command, results, idle memory, the
          targets met or missed, the plot
  --svg   a plot of tps and pooler CPU per transaction by scenario
  --benchmarks / --benchmarks-svg   the same Markdown and plot for the
          repository's BENCHMARKS.md

and prints a summary with the ratios and a plain line naming the scenarios
in which pgdyno is behind PgBouncer. Python's standard library only.
"""

import argparse
import csv
import html
import math
import os
import statistics
import sys

TARGET_ORDER = ["direct", "pgbouncer", "floor", "pgdyno"]
COLORS = {"direct": "#9e9e9e", "pgbouncer": "#4e79a7", "floor": "#59a14f", "pgdyno": "#f28e2b"}
DESCRIPTIONS = {
    "select-simple": "pgbench -S -M simple",
    "select-rate": "pgbench -S -M simple at a fixed rate (-R): the same load for every target",
    "select-extended": "pgbench -S -M extended",
    "select-prepared": "pgbench -S -M prepared",
    "select-400": "pgbench -S, many clients on a small pool",
    "connect": "pgbench -S -C: a new connection and SCRAM login per transaction",
    "tpcb": "tpcb-like (7 statements per transaction)",
    "tpcb-extended": "tpcb-like, -M extended",
    "tpcb-prepared": "tpcb-like, -M prepared",
    "tls": "pgbench -S -M simple, TLS (sslmode=require) on both legs",
}
IDLE_TARGET_BYTES = 4096


def num(s):
    try:
        v = float(s)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1, none="-"):
    if v is None:
        return none
    return f"{v:,.{digits}f}" if abs(v) >= 1000 and digits == 0 else f"{v:.{digits}f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def unit_label(scenario, tls, multi_tls):
    if scenario == "tls" or not multi_tls and tls == "off":
        return scenario
    return f"{scenario}/tls" if tls == "on" else scenario


def derive_run(r, hz, ncpu):
    """Per-run figures: µs per transaction and shares of the CPUs."""
    txns = num(r["transactions"]) or 0
    wall = (num(r["wall_us"]) or 0) / 1e6

    def us(ticks):
        t = num(ticks)
        return t / hz * 1e6 / txns if txns > 0 and t is not None and t >= 0 else None

    d = {
        "tps": num(r["tps"]),
        "latency_ms": num(r["latency_ms"]),
        "p99_ms": num(r["p99_ms"]),
        "failed": num(r["failed"]),
        "transactions": txns,
        "conn_ms": num(r["conn_ms"]),
        "samples": num(r["samples"]),
        "pooler_us": us(r["pooler_ticks"]) if r["has_pooler"] == "1" else None,
        "postgres_us": us(r["postgres_ticks"]),
        "pgbench_us": us(r["pgbench_ticks"]),
        "total_us": us(r["busy_ticks"]),
        "other_pct": (num(r["other_pml"]) or 0) / 10,
        "steal_pct": 100 * (num(r["steal_ticks"]) or 0) / (hz * wall * ncpu) if wall > 0 else None,
        "hwm_kb": num(r["pooler_hwm_kb"]),
        "ok": r["status"] == "ok",
        "status": r["status"],
        "others": r["top_other_processes"],
        "attempts": r["attempts"],
    }
    # pgbench does the same work per transaction whatever it talks to, so
    # its CPU per transaction is a yardstick of the machine's speed in that
    # run: measured against it, a pooler's CPU no longer moves with the
    # whole machine's drift from one run to the next.
    d["pooler_per_pgbench"] = (d["pooler_us"] / d["pgbench_us"]
                               if d["pooler_us"] is not None and d["pgbench_us"] else None)
    pt, ps = num(r["pooler_ticks"]), num(r["pooler_sys_ticks"])
    d["pooler_sys_pct"] = 100 * ps / pt if r["has_pooler"] == "1" and pt and pt > 0 and ps is not None else None
    return d


# Each ratio to PgBouncer and the figure it compares; those figures are
# also compared repetition by repetition.
PAIRED = {"tps_vs_pgb": "tps", "cpu_vs_pgb": "pooler_us", "cpu_norm_vs_pgb": "pooler_per_pgbench",
          "p99_vs_pgb": "p99_ms"}


def summarize(runs, hz, ncpu):
    """Groups the runs by (scenario, tls, target); medians of the good runs."""
    groups, order = {}, []
    for r in runs:
        key = (r["scenario"], r["tls"], r["target"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((r, derive_run(r, hz, ncpu)))
    out = {}
    for key in order:
        rows = groups[key]
        good = [d for _, d in rows if d["ok"]]
        first = rows[0][0]
        s = {
            "scenario": key[0], "tls": key[1], "target": key[2],
            "mode": first["mode"], "clients": first["clients"], "jobs": first["jobs"], "pool": first["pool"],
            "connect": first["connect"] == "1",
            "runs": len(rows), "good_runs": len(good),
            "status": "ok" if len(good) == len(rows) else ";".join(sorted({d["status"] for _, d in rows if not d["ok"]})),
        }
        for k in ("tps", "latency_ms", "p99_ms", "conn_ms", "pooler_us", "postgres_us", "pgbench_us", "total_us",
                  "other_pct", "steal_pct", "pooler_sys_pct", "pooler_per_pgbench"):
            s[k] = median([d[k] for d in good])
        s["failed"] = sum(d["failed"] for _, d in rows if d["failed"] is not None) if rows else None
        s["transactions"] = sum(d["transactions"] for d in good)
        s["samples"] = sum(d["samples"] or 0 for d in good)
        hwms = [d["hwm_kb"] for d in good if d["hwm_kb"] is not None]
        s["hwm_mib"] = max(hwms) / 1024 if hwms else None
        s["max_other_pct"] = max((d["other_pct"] for d in good), default=None)
        s["others"] = "; ".join(sorted({d["others"] for d in good if d["others"] not in ("", "-")}))[:200]
        out[key] = s
    for (scen, tls, target), s in out.items():
        pgb = out.get((scen, tls, "pgbouncer"))
        direct = out.get((scen, tls, "direct"))
        s["tps_vs_pgb"] = ratio(s["tps"], pgb["tps"]) if pgb else None
        s["cpu_vs_pgb"] = ratio(s["pooler_us"], pgb["pooler_us"]) if pgb else None
        s["cpu_norm_vs_pgb"] = ratio(s["pooler_per_pgbench"], pgb["pooler_per_pgbench"]) if pgb else None
        s["p99_vs_pgb"] = ratio(s["p99_ms"], pgb["p99_ms"]) if pgb else None
        s["tps_vs_direct"] = ratio(s["tps"], direct["tps"]) if direct else None
    # Each repetition's run against PgBouncer's run of the same repetition
    # (minutes apart at most): how far the ratio of the medians moves from
    # one repetition to the next, mostly with PostgreSQL's own CPU per
    # transaction, which no pooler controls.
    pgb_runs = {(r["scenario"], r["tls"], r["rep"]): d
                for key, rows in groups.items() if key[2] == "pgbouncer" for r, d in rows if d["ok"]}
    for (scen, tls, target), v in out.items():
        v["by_rep"] = {f: [] for f in PAIRED.values()}
        for r, d in groups[(scen, tls, target)] if target != "pgbouncer" else []:
            b = pgb_runs.get((scen, tls, r["rep"]))
            for f, ratios in v["by_rep"].items():
                q = ratio(d[f], b[f]) if d["ok"] and b else None
                if q is not None:
                    ratios.append(q)
    return out


def spread(s, field):
    """The lowest and highest of a target's ratios to PgBouncer, repetition
    by repetition; None with fewer than two repetitions to compare."""
    rs = s.get("by_rep", {}).get(field, [])
    return (min(rs), max(rs)) if len(rs) >= 2 else None


def spread_text(s, field):
    sp = spread(s, field)
    return "-" if sp is None else f"{sp[0]:.2f}-{sp[1]:.2f}x"


def by_rep_note(s, field, firm):
    """What a miss's text adds about the repetitions."""
    if spread(s, field) is None:
        return ""
    return f"; {spread_text(s, field)} by repetition" + ("" if firm else ", not missed in every one")


def firm_miss(s, field, op, bound):
    """Whether a missed bound is missed in every repetition (or in the only
    one): a miss the spread between repetitions cannot explain."""
    sp = spread(s, field)
    if sp is None:
        return True
    return sp[1] < bound if op == ">=" else sp[0] > bound


def summarize_idle(rows, hz):
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    out = {}
    for target in TARGET_ORDER:
        if target not in by:
            continue
        rs = by[target]
        good = [r for r in rs if r["status"] == "ok" and num(r["ok"])]
        per, login_us, fds = [], [], []
        for r in good:
            ok = num(r["ok"])
            per.append((num(r["rss_kb"]) - num(r["rss0_kb"])) * 1024 / ok)
            lt = num(r["login_ticks"])
            login_us.append(lt / hz * 1e6 / ok if lt is not None and lt >= 0 else None)
            fds.append(num(r["fds"]) - num(r["fds0"]))
        out[target] = {
            "clients": rs[0]["clients"],
            "ok": median([num(r["ok"]) for r in good]),
            "rss0_mib": median([num(r["rss0_kb"]) / 1024 for r in good]),
            "rss_mib": median([num(r["rss_kb"]) / 1024 for r in good]),
            "hwm_mib": max((num(r["hwm_kb"]) / 1024 for r in good), default=None),
            "bytes_per_client": median(per),
            "login_us": median(login_us),
            "login_s": median([num(r["login_s"]) for r in good]),
            "fds": median(fds),
            "runs": len(rs), "good_runs": len(good),
            "status": "ok" if len(good) == len(rs) else ";".join(sorted({r["status"] for r in rs if r["status"] != "ok"})),
        }
    return out


def evaluate_targets(s, idle):
    """The issue's targets: (description, measured, verdict, behind) where
    verdict is met / missed / not measured and behind names the miss briefly."""
    res = []

    def get(scen, target, tls="off"):
        v = s.get((scen, tls, target))
        return v if v and v["status"] == "ok" else None

    # tps >= PgBouncer's in every scenario
    # (select-rate's tps is the rate pgbench was asked for)
    pairs = [(k, v) for k, v in s.items()
             if k[2] == "pgdyno" and k[0] != "select-rate" and (k[0], k[1], "pgbouncer") in s]
    if pairs:
        misses, worst, pgb_failed = [], None, []
        for (scen, tls, _), v in pairs:
            name = scen + ("/tls" if tls == "on" and scen != "tls" else "")
            b = s[(scen, tls, "pgbouncer")]
            r = v["tps_vs_pgb"]
            if v["status"] != "ok":
                misses.append(((name, "failed"), f"{name} (pgdyno failed: {v['status']})", True))
                continue
            if b["status"] != "ok" or r is None:
                pgb_failed.append(name)  # PgBouncer could not run it (1.18 and -M prepared)
                continue
            if worst is None or r < worst[1]:
                worst = (name, r)
            if r < 1.0:
                firm = firm_miss(v, "tps", ">=", 1.0)
                misses.append(((name, "tps"), f"{name} (tps {r:.2f}x{by_rep_note(v, 'tps', firm)})", firm))
        measured = f"lowest {worst[1]:.2f}x ({worst[0]})" if worst else "-"
        if pgb_failed:
            measured += f"; PgBouncer failed in {', '.join(pgb_failed)}"
        res.append(("pgdyno tps >= PgBouncer's in every scenario", measured,
                    "met" if not misses else "missed", misses))
    else:
        res.append(("pgdyno tps >= PgBouncer's in every scenario", "-", "not measured", []))

    def one(desc, scen, field, op, bound, what, tls="off"):
        key = (scen, "tps" if field == "tps_vs_pgb" else field)
        v, b = get(scen, "pgdyno", tls), get(scen, "pgbouncer", tls)
        r = v.get(field) if v and b else None
        if r is None:
            res.append((desc, "-", "not measured", []))
            return
        ok = r >= bound if op == ">=" else r <= bound
        paired = PAIRED[field]
        firm = firm_miss(v, paired, op, bound)
        res.append((desc, f"{r:.2f}x", "met" if ok else "missed",
                    [] if ok else [(key, f"{scen} ({what} {r:.2f}x, target {op} {bound:.2f}x"
                                         f"{by_rep_note(v, paired, firm)})", firm)]))

    one("pgdyno tps >= 1.2x PgBouncer's at 400 clients (select-400)", "select-400", "tps_vs_pgb", ">=", 1.2, "tps")
    one("pgdyno CPU/txn <= 0.8x PgBouncer's in select-simple", "select-simple", "cpu_vs_pgb", "<=", 0.8, "CPU/txn")
    one("pgdyno CPU/txn <= PgBouncer's at a fixed rate (select-rate)", "select-rate", "cpu_vs_pgb", "<=", 1.0,
        "CPU/txn")
    one("pgdyno p99 latency at 400 clients <= PgBouncer's", "select-400", "p99_vs_pgb", "<=", 1.0, "p99")
    d = idle.get("pgdyno")
    if d and d["status"] == "ok" and d["bytes_per_client"] is not None:
        bpc = d["bytes_per_client"]
        ok = bpc <= IDLE_TARGET_BYTES
        n = int(d["ok"] or 0)
        res.append((f"pgdyno memory per idle client <= 4 KiB ({n:,} idle clients)",
                    f"{bpc:,.0f} B" + (f" (PgBouncer {idle['pgbouncer']['bytes_per_client']:,.0f} B)"
                                       if idle.get("pgbouncer") and idle["pgbouncer"]["bytes_per_client"] is not None else ""),
                    "met" if ok else "missed", [] if ok else [(("idle", "bytes"), f"idle ({bpc:,.0f} bytes per idle client, target <= 4096)", True)]))
    else:
        res.append(("pgdyno memory per idle client <= 4 KiB", "-" if not d else d["status"], "not measured", []))
    one("connect: pgdyno tps >= PgBouncer's", "connect", "tps_vs_pgb", ">=", 1.0, "tps")
    one("connect: pgdyno CPU per new client connection <= 0.8x PgBouncer's", "connect", "cpu_vs_pgb", "<=", 0.8,
        "CPU per connection")
    return res


# ---------------------------------------------------------------- text output

def text_table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def x(v):
    return "-" if v is None else f"{v:.2f}x"


def summary_rows(s, multi_tls):
    head = ["scenario", "target", "tps", "lat_ms", "p99_ms", "failed", "pooler_us", "peak_MiB",
            "tps_vs_pgb", "by_rep", "cpu_vs_pgb", "cpu_norm", "p99_vs_pgb", "other%", "status"]
    rows = [head]
    for k, v in s.items():
        rows.append([unit_label(k[0], k[1], multi_tls), k[2], fmt(v["tps"], 0), fmt(v["latency_ms"], 3),
                     fmt(v["p99_ms"], 3), fmt(v["failed"], 0), fmt(v["pooler_us"]), fmt(v["hwm_mib"]),
                     x(v["tps_vs_pgb"]) if k[2] != "pgbouncer" else "1.00x", spread_text(v, "tps"),
                     x(v["cpu_vs_pgb"]) if k[2] in ("floor", "pgdyno") else ("1.00x" if k[2] == "pgbouncer" else "-"),
                     x(v["cpu_norm_vs_pgb"]) if k[2] in ("floor", "pgdyno") else ("1.00x" if k[2] == "pgbouncer" else "-"),
                     x(v["p99_vs_pgb"]) if k[2] != "pgbouncer" else "1.00x", fmt(v["max_other_pct"]), v["status"]])
    return rows


def behind_line(targets, s, repeat=1):
    # a scenario's own target says more than the every-scenario one: it wins
    misses = {}
    for _, _, verdict, ms in targets:
        if verdict == "missed":
            misses.update({key: (text, firm) for key, text, firm in ms})
    firm = [text for text, f in misses.values() if f]
    soft = [text for text, f in misses.values() if not f]
    lines = []
    if firm:
        lines.append("pgdyno is behind PgBouncer in: " + "; ".join(firm))
        if repeat < 2:
            lines.append("(one repetition: a miss of a few percent can be the run-to-run noise; "
                         "REPEAT=3 compares repetition by repetition)")
    if soft:
        lines.append(("pgdyno is also" if firm else "pgdyno is") + " behind PgBouncer in the medians, but not in "
                     "every repetition (within the spread between repetitions), in: " + "; ".join(soft))
    if lines:
        return "\n".join(lines)
    measured = [t for t in targets if t[2] != "not measured"]
    if not measured:
        return "pgdyno vs PgBouncer: nothing to compare (both must be in TARGETS)"
    return f"pgdyno is not behind PgBouncer: all {len(measured)} targets measured are met"


# ---------------------------------------------------------------- Markdown

def md_table(rows):
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def markdown(meta, s, idle, targets, runs, tls_notes, svg_path, multi_tls, noisy, title):
    quick = meta.get("quick") == "1"
    L = [f"# {title}", ""]
    if quick or noisy:
        why = []
        if quick:
            why.append(f"a quick run ({meta['duration']} s per scenario)")
        if noisy:
            why.append(f"other processes used more than {meta['noise_max']}% of the CPUs during "
                       f"{len(noisy)} of {len(runs)} runs ({', '.join(noisy[:6])}{', ...' if len(noisy) > 6 else ''})")
        L += ["> **Noisy figures:** " + "; ".join(why) + ". Ratios are indicative; CPU per transaction is the "
              "steadier figure.", ""]
    L += [
        f"- date: {meta['date']}",
        f"- machine: {meta['ncpu']} CPUs ({meta['cpu_model']}), {meta['memory']}, {meta['kernel']}; "
        f"load average before: {meta['load_before']}",
        f"- {meta['postgres']}; PgBouncer {meta['pgbouncer']} (Debian's package); {meta['pgbench']}"
        + (f"; {meta['openssl']}" if meta.get("openssl", "none") != "none" else ""),
        f"- pgdyno: {meta['pgdyno']}",
        f"- {meta['repeat']} repetition(s) of every scenario, interleaved (each target runs a scenario before the next "
        f"scenario starts; the targets' order rotates between repetitions); {meta['duration']} s per run after "
        f"{meta['warmup']} s of warm-up; pgbench scale {meta['scale']}; each pooler freshly started per scenario; "
        f"figures are medians over the repetitions (failed: the sum; peak RSS: the largest)",
        "",
        "Command (as root; PostgreSQL and PgBouncer run as `nobody`, each pooler in a session of its own, everything on 127.0.0.1):",
        "",
        "    " + meta["command"],
        "",
        "## Results",
        "",
    ]
    scen_rows = [["scenario", "what", "clients", "pgbench -j", "pool"]]
    seen = set()
    for (scen, tls, target), v in s.items():
        if (scen, tls) in seen or target == "direct" and any(k[:2] == (scen, tls) and k[2] != "direct" for k in s):
            continue
        seen.add((scen, tls))
        scen_rows.append([unit_label(scen, tls, multi_tls), DESCRIPTIONS.get(scen, scen) + (" (TLS)" if tls == "on" and scen != "tls" else ""),
                          v["clients"], v["jobs"], v["pool"]])
    L += [md_table(scen_rows), ""]
    rows = [["scenario", "target", "tps", "avg latency ms", "p99 latency ms", "failed", "pooler CPU µs/txn",
             "pooler peak RSS MiB", "tps vs PgBouncer", "… by repetition", "CPU/txn vs PgBouncer",
             "… by repetition", "… per pgbench's CPU", "… by repetition", "p99 vs PgBouncer", "tps vs direct",
             "postgres µs/txn", "pgbench µs/txn", "other CPU %"]]
    for k, v in s.items():
        rows.append([unit_label(k[0], k[1], multi_tls), k[2], fmt(v["tps"], 0), fmt(v["latency_ms"], 3),
                     fmt(v["p99_ms"], 3), fmt(v["failed"], 0) + ("" if v["status"] == "ok" else f" ({v['status']})"),
                     fmt(v["pooler_us"]), fmt(v["hwm_mib"]),
                     x(v["tps_vs_pgb"]), spread_text(v, "tps"),
                     x(v["cpu_vs_pgb"]) if k[2] in ("floor", "pgdyno") else "-", spread_text(v, "pooler_us"),
                     x(v["cpu_norm_vs_pgb"]) if k[2] in ("floor", "pgdyno") else "-",
                     spread_text(v, "pooler_per_pgbench"),
                     x(v["p99_vs_pgb"]),
                     x(v["tps_vs_direct"]), fmt(v["postgres_us"]), fmt(v["pgbench_us"]), fmt(v["max_other_pct"])])
    L += [md_table(rows), ""]
    L += ["- pooler CPU µs/txn: the pooler process's utime+stime (all threads) from /proc over the measured run, "
          "divided by the transactions; in `connect` every transaction is a new client connection, so it is the "
          "CPU per new connection (SCRAM login included). postgres: postmaster and all backends; pgbench: the client.",
          "- … by repetition: the lowest and highest ratio of a run to PgBouncer's run in the same repetition "
          "(the two are minutes apart at most). PostgreSQL's and pgbench's CPU per transaction, which no pooler "
          "controls, move between repetitions by more than the poolers differ, and tps follows the machine's "
          "total CPU per transaction; a ratio of the medians inside this range is within that noise.",
          "- … per pgbench's CPU: the same comparison with each pooler's CPU per transaction divided by pgbench's "
          "in the same run. pgbench does the same work whatever it talks to, so this takes out the drift of the "
          "whole machine's speed between runs, which moves every process's CPU per transaction together "
          "(pgbench's own figure moves a little with the pooler too: a quicker answer can find more sockets "
          "ready per wake-up, so read the two ratios together).",
          "- p99 latency: from pgbench's per-transaction log (`--log --sampling-rate`, "
          f"{int(sum(v['samples'] for v in s.values())):,} sampled transactions in all); "
          "average latency and failed transactions: pgbench's summary.",
          "- peak RSS: the pooler's VmHWM (/proc/PID/status) at the end of the scenario; direct has no pooler.",
          "- other CPU %: busy CPU outside pgbench, PostgreSQL and the pooler, as a share of all CPUs "
          "(the largest over the repetitions): anything above a few percent means something else disturbed the run.",
          ""]
    if any(v["connect"] and v["conn_ms"] is not None for v in s.values()):
        conn = ", ".join(f"{k[2]} {v['conn_ms']:.3f} ms" for k, v in s.items() if v["connect"] and v["conn_ms"] is not None)
        L += [f"`connect`: pgbench's average connection time: {conn}.", ""]
    if idle:
        L += ["## Idle clients", "",
              f"Each pooler started alone; its RSS (VmRSS) after one login, then with {meta['idle_clients']} more clients "
              "logged in (SCRAM) and idle, opened by `benches/idle_clients.py`. Kernel socket buffers are not in RSS.", ""]
        rows = [["target", "idle clients", "RSS with 0 MiB", f"RSS with idle clients MiB", "peak RSS MiB",
                 "bytes per idle client", "pooler CPU µs per login", "login time s", "status"]]
        for t, d in idle.items():
            rows.append([t, fmt(d["ok"], 0), fmt(d["rss0_mib"]), fmt(d["rss_mib"]), fmt(d["hwm_mib"]),
                         fmt(d["bytes_per_client"], 0), fmt(d["login_us"]), fmt(d["login_s"], 2), d["status"]])
        L += [md_table(rows), ""]
    L += ["## Targets", "", md_table([["target", "measured", "verdict"]] +
                                     [[d, m, "**met**" if v == "met" else ("**missed**" if v == "missed" else v)]
                                      for d, m, v, _ in targets]), ""]
    L += [behind_line(targets, s, int(meta["repeat"])).replace("\n", ".\n\n") + ".", ""]
    if svg_path:
        L += ["## Plot", "", f"![tps and pooler CPU per transaction by scenario]({svg_path})", ""]
    notes = []
    failed_pgb = [k[0] for k, v in s.items() if k[2] == "pgbouncer" and v["status"] != "ok"]
    if any(k[0].endswith("prepared") for k in s) and any(f.endswith("prepared") for f in failed_pgb):
        notes.append("PgBouncer 1.18 cannot run `-M prepared` in transaction mode (each client's named statements "
                     "land on whichever backend it gets: `prepared statement \"P_0\" already exists`); it needs "
                     "1.21+ with `max_prepared_statements`. Its row there is a failure, not a figure.")
    conn = [v for k, v in s.items() if k[0] == "connect" and v["pgbench_us"]]
    if conn:
        pb = median([v["pgbench_us"] for v in conn])
        notes.append(f"`connect`: pgbench spends about {pb / 1000:.1f} ms of CPU per connection, mostly libpq's "
                     "SCRAM key derivation (PBKDF2, 4096 iterations, through OpenSSL 3), against a few hundred µs "
                     "for either pooler; on a 2-core machine that caps tps and makes the tps ratio mostly noise. "
                     "The pooler CPU per connection is the figure that tells the poolers apart.")
    if any(k[0] == "select-400" for k in s):
        notes.append("`select-400`: pgbench's clients log in before the measurement starts (the CPU window opens "
                     "once pgbench holds a socket per client, and pgbench's tps leaves its initial connection time "
                     "out), so the 400 SCRAM logins are not in the per-transaction figures.")
    floors = [(k, v) for k, v in s.items() if k[2] == "floor" and v["pooler_us"] is not None]
    if floors:
        parts = []
        for (scen, tls, _), v in floors:
            d = s.get((scen, tls, "pgdyno"))
            if d and d["pooler_us"] is not None:
                vs = f" ({x(v['cpu_vs_pgb'])} PgBouncer's)" if v["cpu_vs_pgb"] is not None else ""
                parts.append(f"{scen}: floor {v['pooler_us']:.1f} µs{vs}, "
                             f"pgdyno {d['pooler_us'] - v['pooler_us']:+.1f} µs above it")
        notes.append("`floor` is the cheapest relay tokio allows (`benches/tokio_floor.rs`): a PostgreSQL "
                     "connection of its own for every client and one task copying bytes both ways, on the runtime "
                     "pgdyno uses; nothing parsed, pooled or counted. It makes the same system calls per "
                     "transaction as both poolers, so its CPU per transaction is what the kernel and tokio cost, and "
                     "what pgdyno needs above it is pgdyno's own work. It runs only where it relays like a pooler "
                     "(not in select-400, connect or tls). " + "; ".join(parts) + ("." if parts else ""))
    if idle:
        notes.append("Idle memory counts the pooler's own memory (RSS) only; the kernel's socket buffers, the same "
                     "for both poolers, are not in it.")
    if notes:
        L += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if tls_notes:
        L += ["## TLS", "", "Negotiated (psql's `\\conninfo` and `pg_stat_ssl` after each target's TLS run):", ""]
        L += tls_notes + [""]
    L += ["## Every run", "", md_table([["rep", "scenario", "tls", "target", "tps", "p99 ms", "pooler µs/txn",
                                         "other CPU %", "attempts", "status", "top other processes"]] +
                                        [[r["rep"], r["scenario"], r["tls"], r["target"], fmt(num(r["tps"]), 0),
                                          r["p99_ms"], fmt(derive_run(r, HZ, NCPU)["pooler_us"]),
                                          fmt(num(r["other_pml"]) / 10 if num(r["other_pml"]) is not None else None),
                                          r["attempts"], r["status"], r["top_other_processes"]] for r in runs]), ""]
    L += ["Reproduce: `benches/load.sh` (full, `--help` for the knobs), `benches/load.sh --quick` (a few seconds per "
          "scenario, against PgBouncer); `--write-benchmarks` rewrites this file and `benches/load.svg`.", ""]
    return "\n".join(L)


# ---------------------------------------------------------------- SVG

def svg_plot(meta, s, multi_tls, idle):
    units = []
    for k in s:
        if k[:2] not in units:
            units.append(k[:2])
    targets = [t for t in TARGET_ORDER if any(k[2] == t for k in s)]
    cell_w, cell_h, top, left, gap = 150, 150, 74, 95, 10
    ncols = len(units) + (1 if idle else 0)
    width = left + ncols * (cell_w + gap) + 20
    height = top + 2 * (cell_h + 40) - 10
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">pgdyno load benchmark: tps and pooler CPU per '
           f'transaction by scenario</text>',
           f'<text x="{left}" y="40" fill="#555">{e(meta["date"])}; {e(meta["ncpu"])} CPUs, {e(meta["kernel"])}; '
           f'PgBouncer {e(meta["pgbouncer"])}; {e(meta["duration"])} s x {e(meta["repeat"])} per scenario'
           f'{"; quick run" if meta.get("quick") == "1" else ""}</text>']
    lx = left
    for t in targets:
        out.append(f'<rect x="{lx}" y="50" width="10" height="10" fill="{COLORS[t]}"/>'
                   f'<text x="{lx + 14}" y="59">{t}</text>')
        lx += 90

    def cell(col, row, title, values, unit, digits):
        x0 = left + col * (cell_w + gap)
        y0 = top + row * (cell_h + 40)
        out.append(f'<rect x="{x0}" y="{y0}" width="{cell_w}" height="{cell_h}" fill="#fafafa" stroke="#ddd"/>')
        out.append(f'<text x="{x0 + cell_w / 2}" y="{y0 + cell_h + 14}" text-anchor="middle" font-weight="bold">'
                   f'{e(title)}</text>')
        vals = [(t, v) for t, v in values if v is not None]
        if not vals:
            out.append(f'<text x="{x0 + cell_w / 2}" y="{y0 + cell_h / 2}" text-anchor="middle" fill="#999">n/a</text>')
            return
        vmax = max(v for _, v in vals) or 1
        got = dict(vals)
        if "pgdyno" in got and got.get("pgbouncer"):
            out.append(f'<text x="{x0 + cell_w - 4}" y="{y0 + 12}" text-anchor="end" fill="#555" font-size="10">'
                       f'pgdyno/PgBouncer {got["pgdyno"] / got["pgbouncer"]:.2f}x</text>')
        n = len(values)
        bw = (cell_w - 20) / n
        for i, (t, v) in enumerate(values):
            bx = x0 + 10 + i * bw
            if v is None:
                out.append(f'<text x="{bx + bw / 2}" y="{y0 + cell_h - 4}" text-anchor="middle" fill="#999">n/a</text>')
                continue
            h = (cell_h - 34) * v / vmax
            out.append(f'<rect x="{bx + 3:.1f}" y="{y0 + cell_h - h:.1f}" width="{bw - 6:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS.get(t, "#888")}"><title>{e(t)}: {v:.{digits}f} {e(unit)}</title></rect>')
            label = f"{v:,.0f}" if digits == 0 else f"{v:.{digits}f}"
            out.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 + cell_h - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="{10 if len(label) < 7 else 9}">{label}</text>')

    out.append(f'<text x="{left - 8}" y="{top + cell_h / 2}" text-anchor="end" font-weight="bold">tps</text>')
    out.append(f'<text x="{left - 8}" y="{top + cell_h + 40 + cell_h / 2 - 6}" text-anchor="end" font-weight="bold">'
               f'pooler CPU</text>')
    out.append(f'<text x="{left - 8}" y="{top + cell_h + 40 + cell_h / 2 + 8}" text-anchor="end">µs/txn</text>')
    for c, (scen, tls) in enumerate(units):
        label = unit_label(scen, tls, multi_tls)
        cell(c, 0, label, [(t, s[(scen, tls, t)]["tps"] if (scen, tls, t) in s else None) for t in targets], "tps", 0)
        cell(c, 1, label + (" (/conn)" if scen == "connect" else ""),
             [(t, s[(scen, tls, t)]["pooler_us"] if (scen, tls, t) in s else None) for t in targets if t != "direct"],
             "µs per transaction", 1)
    if idle:
        c = len(units)
        cell(c, 1, f"idle: bytes/client ({int(idle_n):,})" if (idle_n := max((d["ok"] or 0) for d in idle.values())) else
             "idle: bytes/client", [(t, idle[t]["bytes_per_client"] if t in idle else None)
                                    for t in targets if t != "direct"], "bytes per idle client", 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main

def main():
    global HZ, NCPU
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True)
    p.add_argument("--idle")
    p.add_argument("--meta", required=True)
    p.add_argument("--tls-notes")
    p.add_argument("--csv")
    p.add_argument("--md")
    p.add_argument("--svg")
    p.add_argument("--benchmarks")
    p.add_argument("--benchmarks-svg")
    a = p.parse_args()

    meta = read_meta(a.meta)
    HZ, NCPU = float(meta["hz"]), float(meta["ncpu"])
    runs = read_tsv(a.runs)
    idle_rows = read_tsv(a.idle) if a.idle and os.path.exists(a.idle) else []
    s = summarize(runs, HZ, NCPU)
    idle = summarize_idle(idle_rows, HZ)
    multi_tls = len({r["tls"] for r in runs if r["scenario"] != "tls"}) > 1
    targets = evaluate_targets(s, idle)
    noise_max = float(meta.get("noise_max", 5))
    noisy = sorted({f"{r['scenario']}/{r['target']}" for r in runs
                    if r["status"] == "ok" and (num(r["other_pml"]) or 0) / 10 > noise_max})
    tls_notes = []
    if a.tls_notes and os.path.exists(a.tls_notes):
        tls_notes = [line.rstrip("\n") for line in open(a.tls_notes) if line.strip()]

    if a.csv:
        cols = ["scenario", "tls", "target", "mode", "clients", "jobs", "pool", "tps", "latency_ms", "p99_ms", "failed",
                "transactions", "samples", "conn_ms", "pooler_us", "hwm_mib", "tps_vs_pgb", "cpu_vs_pgb", "cpu_norm_vs_pgb",
                "p99_vs_pgb",
                "tps_vs_direct", "postgres_us", "pgbench_us", "total_us", "other_pct", "max_other_pct", "steal_pct",
                "pooler_sys_pct", "runs", "good_runs", "status"]
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for v in s.values():
                w.writerow(["" if v[c] is None else (f"{v[c]:.3f}" if isinstance(v[c], float) else v[c]) for c in cols])
            for t, d in idle.items():
                w.writerow(["idle", "off", t] + [""] * (len(cols) - 4) + [d["status"]])
    svg = svg_plot(meta, s, multi_tls, idle) if s or idle else None
    if a.svg and svg:
        with open(a.svg, "w") as f:
            f.write(svg)
    if a.md:
        with open(a.md, "w") as f:
            f.write(markdown(meta, s, idle, targets, runs, tls_notes, os.path.basename(a.svg) if a.svg and svg else None,
                             multi_tls, noisy, f"pgdyno load benchmark, {meta['date']}"))
    if a.benchmarks:
        svg_rel = None
        if a.benchmarks_svg and svg:
            with open(a.benchmarks_svg, "w") as f:
                f.write(svg)
            svg_rel = os.path.relpath(a.benchmarks_svg, os.path.dirname(os.path.abspath(a.benchmarks)))
        with open(a.benchmarks, "w") as f:
            f.write(markdown(meta, s, idle, targets, runs, tls_notes, svg_rel, multi_tls, noisy,
                             "Benchmarks: pgdyno vs PgBouncer vs direct"))

    # the summary on the terminal
    if s:
        print(text_table(summary_rows(s, multi_tls)))
        print()
    if idle:
        rows = [["idle", "clients", "rss0_MiB", "rss_MiB", "bytes/client", "login_us", "status"]]
        for t, d in idle.items():
            rows.append([t, fmt(d["ok"], 0), fmt(d["rss0_mib"]), fmt(d["rss_mib"]), fmt(d["bytes_per_client"], 0),
                         fmt(d["login_us"]), d["status"]])
        print(text_table(rows))
        print()
    print(text_table([["target", "measured", "verdict"]] + [[d, m, v] for d, m, v, _ in targets]))
    print()
    if noisy:
        print(f"warning: other processes used more than {noise_max:g}% of the CPUs in: {', '.join(noisy)}; "
              "those figures are disturbed")
    line = behind_line(targets, s, int(meta["repeat"]))
    if noisy and line.startswith("pgdyno is behind"):
        line += (f"\n(other processes disturbed {len(noisy)} of {len(runs)} runs: "
                 "measure again on a quiet machine before believing a small miss)")
    print(line)
    return 0


HZ, NCPU = 100.0, 1.0

if __name__ == "__main__":
    sys.exit(main())

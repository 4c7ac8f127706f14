//! Metric names in one place, the Prometheus endpoint, and the health
//! endpoints, on `--metrics-listen`.
//!
//! Counters live in [`crate::stats`] (atomics shared with `SHOW STATS`) and
//! are published here at each scrape, with the gauges read from the pools at
//! that moment. The histograms live there too, as per-thread buckets, and
//! are written out here in Prometheus' text format: a histogram in the
//! `metrics` recorder would cost every transaction atomic adds to shared
//! buckets. The HTTP side is a few lines over tokio: three GET routes need
//! no framework.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pooler::Pooler;
use crate::stats::{Histogram, BOUNDS_US, HISTOGRAMS};

/// Installs the process-wide recorder; returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // A second install (in tests) keeps the first recorder.
    let _ = metrics::set_global_recorder(recorder);
    handle
}

/// Publishes counters and gauges as they are now, and renders everything.
pub fn render(pooler: &Pooler, handle: &PrometheusHandle) -> String {
    for pool in pooler.pools() {
        let labels = [
            ("database", pool.database.clone()),
            ("user", pool.user.clone()),
        ];
        let snap = pool.snapshot();
        let size = pool.settings().size as f64;
        gauge!("pgdyno_clients_active", &labels).set(snap.clients_active as f64);
        gauge!("pgdyno_clients_waiting", &labels).set(snap.clients_waiting as f64);
        gauge!("pgdyno_backends_active", &labels).set(snap.backends_active as f64);
        gauge!("pgdyno_backends_idle", &labels).set(snap.backends_idle as f64);
        gauge!("pgdyno_backends_used", &labels).set(0.0);
        gauge!("pgdyno_backends_tested", &labels).set(0.0);
        gauge!("pgdyno_backends_login", &labels).set(snap.backends_login as f64);
        gauge!("pgdyno_pool_size", &labels).set(size);
        gauge!("pgdyno_pool_saturation", &labels).set(snap.backends_active as f64 / size);
        gauge!("pgdyno_longest_wait_seconds", &labels).set(snap.longest_wait.as_secs_f64());
        let s = &pool.stats;
        let mut t = crate::stats::Totals::default();
        t.add_pool(s);
        for (name, value) in [
            ("pgdyno_transactions_total", t.xacts),
            ("pgdyno_queries_total", t.queries),
            ("pgdyno_received_bytes_total", t.received),
            ("pgdyno_sent_bytes_total", t.sent),
            ("pgdyno_client_logins_total", t.logins),
            (
                "pgdyno_backend_connects_total",
                s.backend_connects.load(Relaxed),
            ),
            (
                "pgdyno_backend_connect_failures_total",
                s.backend_connect_failures.load(Relaxed),
            ),
            ("pgdyno_client_parses_total", t.client_parses),
            ("pgdyno_backend_parses_total", t.server_parses),
            ("pgdyno_binds_total", t.binds),
            (
                "pgdyno_query_wait_timeouts_total",
                s.wait_timeouts.load(Relaxed),
            ),
        ] {
            counter!(name, &labels).absolute(value);
        }
        for (class, n) in s.errors.lock().unwrap().iter() {
            let mut with_class = labels.to_vec();
            with_class.push(("sqlstate_class", class.clone()));
            counter!("pgdyno_client_errors_total", &with_class).absolute(*n);
        }
    }
    let g = &pooler.stats;
    gauge!("pgdyno_clients").set(pooler.clients.load(Relaxed) as f64);
    gauge!("pgdyno_max_client_conn").set(pooler.config().max_client_conn as f64);
    counter!("pgdyno_login_failures_total").absolute(g.login_failures.load(Relaxed));
    counter!("pgdyno_max_client_conn_refusals_total")
        .absolute(g.max_client_conn_refusals.load(Relaxed));
    for (class, n) in g.errors.lock().unwrap().iter() {
        counter!("pgdyno_pooler_errors_total", "sqlstate_class" => class.clone()).absolute(*n);
    }
    let mut text = handle.render();
    histograms(pooler, &mut text);
    text
}

/// Appends each pool's histograms in Prometheus' text format, one family
/// after another: cumulative `_bucket` lines ending in `le="+Inf"`, then
/// `_sum` in seconds and `_count`.
fn histograms(pooler: &Pooler, out: &mut String) {
    let pools: Vec<_> = pooler
        .pools()
        .into_iter()
        .map(|pool| {
            let labels = format!(
                "database=\"{}\",user=\"{}\"",
                escape(&pool.database),
                escape(&pool.user)
            );
            (labels, pool.stats.histograms())
        })
        .collect();
    if pools.is_empty() {
        return;
    }
    for (family, name) in HISTOGRAMS.iter().enumerate() {
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (labels, histograms) in &pools {
            family_lines(out, name, labels, &histograms[family]);
        }
    }
}

fn family_lines(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut below = 0;
    for (i, n) in h.counts.iter().enumerate() {
        below += n;
        let le = match BOUNDS_US.get(i) {
            Some(&us) => (us as f64 / 1e6).to_string(),
            None => "+Inf".to_owned(),
        };
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {below}");
    }
    let sum = h.sum_us as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {below}");
}

/// A label value as the text format wants it: backslash, double quote and
/// line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `GET /metrics`, `/health` and `/ready` until the process ends.
pub async fn serve(listener: TcpListener, pooler: Arc<Pooler>, handle: PrometheusHandle) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (pooler, handle) = (pooler.clone(), handle.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &pooler, &handle))
                .await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    pooler: &Pooler,
    handle: &PrometheusHandle,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", render(pooler, handle)),
        (b"GET", b"/health") => ("200 OK", "ok\n".to_owned()),
        (b"GET", b"/ready") => match readiness(pooler) {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", format!("{why}\n")),
        },
        (b"GET", _) => ("404 Not Found", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let content_type = if path == b"/metrics" {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Ready: listening, not shutting down, and no pool whose last backend
/// login failed without a success since.
fn readiness(pooler: &Pooler) -> Result<(), String> {
    if pooler.shutdown.has_begun() {
        return Err("shutting down".into());
    }
    for pool in pooler.pools() {
        if pool.failing() {
            return Err(format!(
                "database {} (user {}): cannot connect to PostgreSQL",
                pool.database, pool.user
            ));
        }
    }
    Ok(())
}

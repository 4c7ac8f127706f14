//! The `pgdyno` command: read settings, start logging, serve until a signal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use pgdyno::config::{Config, Sources, SETTINGS};
use pgdyno::listener::Listeners;
use pgdyno::pooler::Pooler;
use pgdyno::sidecar::{Sidecar, SidecarError};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "\
pgdyno: a connection-pooling PostgreSQL proxy

Usage:
  pgdyno [--config FILE] [--SETTING VALUE]...
  pgdyno run [--SETTING VALUE]... -- COMMAND [ARGS]...   (beside an app: see docs/heroku.md)

  pgdyno --listen 127.0.0.1:6432 --upstream postgres://user:pass@host:5432/db \\
         --pool-mode transaction --pool-size 20 --max-client-conn 1000

Every setting can be given in the TOML file (key = value), as an env var
(PGDYNO_KEY) or as a flag (--key, dashes for underscores); flags win over env,
env over the file. With no upstream and no [databases], DATABASE_URL is used.

Settings (default):";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "run") {
        return run_sidecar(&args[1..]);
    }
    let sources = parse_args(args.into_iter())?;
    let config = match Config::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgdyno: {e}");
            std::process::exit(2);
        }
    };
    let pidfile = start_logs_and_pidfile(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = runtime(&config)?;
    let served = runtime.block_on(serve(config, sources));
    drop(pidfile);
    served
}

/// `logfile` and `pidfile` (and the log on stderr); either failing stops
/// startup. The pidfile goes when the returned value is dropped.
fn start_logs_and_pidfile(config: &Config) -> Option<pgdyno::pidfile::PidFile> {
    let started = pgdyno::logs::init(config)
        .and_then(|()| pgdyno::pidfile::PidFile::create(config.pidfile.as_deref()));
    started.unwrap_or_else(|e| {
        eprintln!("pgdyno: {e}");
        std::process::exit(2);
    })
}

/// `pgdyno run [--SETTING VALUE]... -- COMMAND [ARGS]...`: see `pgdyno::sidecar`.
fn run_sidecar(args: &[String]) -> anyhow::Result<()> {
    let Some(split) = args.iter().position(|a| a == "--") else {
        exit_with(SidecarError::Usage);
    };
    let sources = parse_args(args[..split].iter().cloned())?;
    let command = args[split + 1..].to_vec();
    let sidecar = Sidecar::prepare(sources, command).unwrap_or_else(|e| exit_with(e));
    let pidfile = start_logs_and_pidfile(&sidecar.config);
    let runtime = runtime(&sidecar.config)?;
    let ran = runtime.block_on(sidecar.run());
    drop(pidfile);
    match ran {
        Ok(code) => std::process::exit(code),
        Err(e) => exit_with(e),
    }
}

fn exit_with(e: SidecarError) -> ! {
    eprintln!("pgdyno run: {e}");
    std::process::exit(e.exit_code())
}

/// `--key value`, `--key=value`, and `--switch` alone (meaning true).
fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Sources> {
    let mut sources = Sources {
        env: std::env::vars().collect(),
        ..Default::default()
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            bail!("unexpected argument \"{arg}\" (see pgdyno --help)");
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        match name.as_str() {
            "help" => {
                let mut text = format!("{USAGE}\n");
                for s in SETTINGS {
                    text += &format!(
                        "  --{:<28} {} ({})\n",
                        s.name.replace('_', "-"),
                        s.help,
                        s.default
                    );
                }
                print_and_exit(&text);
            }
            "version" => print_and_exit(&format!("pgdyno {}\n", env!("CARGO_PKG_VERSION"))),
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().unwrap_or_default(),
                _ => "true".to_owned(),
            },
        };
        let key = name.replace('-', "_");
        if key == "config" {
            sources.file = Some(PathBuf::from(value));
        } else {
            sources.flags.push((key, value));
        }
    }
    Ok(sources)
}

/// As PgBouncer: SIGTERM waits for the clients to leave
/// (`wait_for_clients`), SIGINT closes each client after its transaction;
/// a signal during a shutdown closes everything at once.
fn stop_signal(
    shutdown: &pgdyno::shutdown::Shutdown,
    name: &str,
    wait_for_clients: bool,
    timeout: Duration,
) {
    if shutdown.has_begun() {
        tracing::warn!("{name} during the shutdown: closing everything now");
        shutdown.now();
    } else if wait_for_clients {
        tracing::info!(
            ?timeout,
            "{name}: no new clients; serving those connected until they leave"
        );
        shutdown.wait_for_clients(timeout);
    } else {
        tracing::info!(
            ?timeout,
            "{name}: no new clients; closing each client after its transaction"
        );
        shutdown.begin(timeout);
    }
}

/// One thread keeps a client and its backend on one core and wakes no
/// other thread: on a small machine shared with PostgreSQL and the app that
/// is the fastest (measured with benches/load.sh). Bigger machines get a
/// worker per four cores unless `worker_threads` says otherwise.
///
/// One thread is tokio's current-thread scheduler, on the main thread: the
/// multi-thread one with a single worker does work-stealing bookkeeping on
/// every poll and park for nobody (callgrind, pgbench -S: 920 fewer
/// instructions per transaction, about an eighth of pgdyno's).
fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match config.worker_threads {
        0 => (cores / 4).max(1),
        n => n,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build().context("starting the runtime")
}

/// Prints `text` and exits 0; a reader that went away (`pgdyno --help |
/// head`) is no error.
fn print_and_exit(text: &str) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    std::process::exit(0)
}

async fn serve(mut config: Config, sources: Sources) -> anyhow::Result<()> {
    // Handlers first: a signal must never find pgdyno listening without them.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    if let Err(e) = pgdyno::autosize::resolve(&mut config).await {
        eprintln!("pgdyno: {e}");
        std::process::exit(2);
    }
    // The recorder must exist before pools register their histograms.
    let metrics = config
        .metrics_listen
        .map(|addr| (addr, pgdyno::metrics::install()));
    let pooler = match Pooler::with_sources(config, Some(sources)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pgdyno: {e}");
            std::process::exit(2);
        }
    };
    let listeners = Listeners::bind(&pooler)
        .await
        .with_context(|| format!("cannot listen on {}", pooler.config().listen))?;
    tracing::info!(
        listen = %listeners.local_addr()?,
        databases = ?pooler.config().databases.iter().map(|d| format!("{} -> {}", d.name, d.upstream.redacted())).collect::<Vec<_>>(),
        "pgdyno listening"
    );
    if let Some((addr, handle)) = metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
        tracing::info!(listen = %addr, "metrics and health endpoints listening");
        tokio::spawn(pgdyno::metrics::serve(listener, pooler.clone(), handle));
    }
    tokio::spawn(pooler.clone().keep_stats());
    tokio::spawn(pooler.clone().forget_unused_auto_pools());
    let shutdown = pooler.shutdown.clone();
    let timeout = pooler.config().shutdown_timeout;
    let mut server = tokio::spawn(listeners.serve(pooler.clone()));
    loop {
        tokio::select! {
            _ = &mut server => break,
            _ = term.recv() => stop_signal(&shutdown, "SIGTERM", true, timeout),
            _ = int.recv() => stop_signal(&shutdown, "SIGINT", false, timeout),
            _ = hup.recv() => {
                if let Err(e) = pooler.reload() {
                    tracing::error!(event = "reload_failed", error = %e, "SIGHUP: the new configuration is refused; the old one stays");
                }
            }
            _ = quit.recv() => {
                tracing::warn!("SIGQUIT: closing everything now");
                shutdown.now();
            }
        }
    }
    Ok(())
}

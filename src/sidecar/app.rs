//! The app's process: started, waited for by a thread of its own, and sent
//! signals by pid.
//!
//! Not `tokio::process`: with it, tokio's driver looks for exited children
//! at every wake-up of every worker (callgrind: about 60 instructions per
//! transaction on the relay's path), all for one child.

use std::io;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

pub struct App {
    pid: u32,
    /// The exit status, sent by the waiting thread.
    exited: oneshot::Receiver<io::Result<ExitStatus>>,
    /// Set once the child is reaped: its pid may then be another process's.
    reaped: Arc<AtomicBool>,
}

impl App {
    pub fn spawn(command: &mut Command) -> io::Result<App> {
        let mut child = command.spawn()?;
        let pid = child.id();
        let (tx, exited) = oneshot::channel();
        let reaped = Arc::new(AtomicBool::new(false));
        let flag = reaped.clone();
        let waiting = std::thread::Builder::new()
            .name("pgdyno-app".into())
            .spawn(move || {
                let status = child.wait();
                flag.store(true, Ordering::SeqCst);
                let _ = tx.send(status);
            });
        if let Err(e) = waiting {
            // Nobody would wait for it.
            let _ = kill(pid, "KILL");
            return Err(e);
        }
        Ok(App {
            pid,
            exited,
            reaped,
        })
    }

    /// Waits for the app to exit; call it until it returns once.
    ///
    /// # Cancel safety
    /// Cancel safe: the status waits in the channel.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match (&mut self.exited).await {
            Ok(status) => status,
            Err(_) => Err(io::Error::other("the thread waiting for the app ended")),
        }
    }

    /// Sends the signal `name` (`TERM`, `KILL`, ...) with the `kill`
    /// builtin of `/bin/sh`: `unsafe` is forbidden in this crate, and the
    /// shell is there on every image an app runs on.
    pub async fn signal(&self, name: &'static str) {
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        let pid = self.pid;
        let sent = tokio::task::spawn_blocking(move || kill(pid, name))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match sent {
            Ok(()) => tracing::debug!(pid, "sent SIG{name} to the app"),
            Err(e) => tracing::warn!(pid, error = %e, "could not send SIG{name} to the app"),
        }
    }
}

fn kill(pid: u32, name: &str) -> io::Result<()> {
    let out = Command::new("/bin/sh")
        .args(["-c", "kill -s \"$0\" \"$1\"", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

//! `pidfile`: the process id written where service managers and scripts
//! look for it, as PgBouncer does. A file naming a running pgdyno stops a
//! second one from starting; one left by a process that is gone (or whose
//! pid another program now has) is taken over. It is removed at exit.

use std::path::{Path, PathBuf};

/// The written file; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path` (nothing without one).
    pub fn create(path: Option<&Path>) -> Result<Option<PidFile>, String> {
        let Some(path) = path else {
            return Ok(None);
        };
        let shown = path.display();
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && is_pgdyno(pid) {
                    return Err(format!(
                        "pidfile {shown} names pgdyno process {pid}, which is running: \
                         another instance? (stop it, or remove the file if it is not one)"
                    ));
                }
            }
        }
        // Written whole under another name, then renamed into place: a
        // reader never sees a half-written pid.
        let partial = path.with_extension("pid.partial");
        std::fs::write(&partial, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| format!("cannot write pidfile {shown}: {e}"))?;
        Ok(Some(PidFile {
            path: path.to_owned(),
        }))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only if it is still ours (a second instance may have taken it over).
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether process `pid` runs and is a pgdyno (not a program that got a
/// dead pgdyno's pid since).
fn is_pgdyno(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "pgdyno")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_file_is_taken_over_and_removed_at_the_end() {
        let dir = std::env::temp_dir().join(format!("pgdyno-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgdyno.pid");
        // This test's own process is no pgdyno, whatever its pid.
        std::fs::write(&path, "1\n").unwrap();
        let file = PidFile::create(Some(&path)).unwrap().unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(written, format!("{}\n", std::process::id()));
        drop(file);
        assert!(!path.exists());
        assert!(PidFile::create(None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

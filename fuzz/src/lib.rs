//! The harnesses behind pgdyno's fuzz targets, one function per target.
//!
//! Each `fuzz_targets/<name>.rs` is a one-line libFuzzer entry point that
//! calls the function of the same name here, so the same harness also runs
//! as a plain `cargo test` over the committed seeds and regressions (see
//! the tests below): a smoke check that needs neither nightly nor
//! cargo-fuzz.
//!
//! - [`protocol`]: the startup packet, client-message and backend-message
//!   framing ([`pgdyno::protocol::frame::Scanner`]) and the bodies pgdyno
//!   decodes;
//! - [`relay`]: the relay's own translation of a client and a backend
//!   stream, interleaved ([`pgdyno::relay::fuzzing`]);
//! - [`scram`]: both sides of SCRAM-SHA-256;
//! - [`config`]: `userlist.txt`, upstream URLs / key=value strings, and
//!   the TOML config file through `Config::load`.
//!
//! A harness panics only when pgdyno's code does, or when one of its
//! invariants (written as `assert!`s here) fails.

mod config;
mod protocol;
mod scram;

pub use config::{config_toml, upstream_url, userlist};
pub use protocol::{backend_messages, client_messages, startup};
pub use scram::{scram_client, scram_server};

/// See [`pgdyno::relay::fuzzing::exchange`].
pub fn relay(data: &[u8]) {
    pgdyno::relay::fuzzing::exchange(data);
}

/// Every target, by name, for the tests and for `examples/replay.rs`.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("startup", startup),
    ("client_messages", client_messages),
    ("backend_messages", backend_messages),
    ("relay", relay),
    ("scram_server", scram_server),
    ("scram_client", scram_client),
    ("userlist", userlist),
    ("upstream_url", upstream_url),
    ("config_toml", config_toml),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Runs every target over its seeds and its regressions.
    #[test]
    fn seeds_and_regressions_pass() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut ran = 0;
        for (name, harness) in super::TARGETS {
            for dir in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    let result = std::panic::catch_unwind(|| harness(&data));
                    assert!(result.is_ok(), "{name}: {} panics", path.display());
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no seeds found");
    }
}

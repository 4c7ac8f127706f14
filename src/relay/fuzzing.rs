//! The fuzzer's way into the relay (feature `fuzzing`, used by `fuzz/`):
//! the relay's own translation ([`super::translate`], with its private
//! [`super::requests`] and [`super::responses`] visitors, the pipeline and
//! the prepared-statement renaming) of a client stream and a backend
//! stream interleaved as the input says, checking what the relay must
//! keep whatever the bytes.
//!
//! Input: `[flags, chunk...]`. `flags` bit 0: transaction mode; bit 1:
//! prepared statements on; bit 2: simple queries refused. Each chunk is a
//! header byte `h` (bit 0: 0 from the client, 1 from the backend; `h >> 1`:
//! length - 1) and its bytes.

use bytes::BytesMut;

use super::translate::{BackendSide, Translation};
use super::RelaySettings;
use crate::prepared::BackendStatements;
use crate::protocol::frame;
use crate::session::Session;
use crate::stats::PoolStats;

/// What the relay must keep, checked after every chunk:
/// - no panic, and each side's output is whole messages with sound
///   lengths, ending half-way through one only while that direction's
///   scanner is half-way through forwarding it: nothing pgdyno writes
///   itself lands inside a message it is still passing on;
/// - byte counts add up: no input byte is lost or made up.
pub fn exchange(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let stats = PoolStats::default();
    let span = tracing::Span::none();
    let settings = RelaySettings {
        max_packet: 8192,
        transaction_mode: flags & 1 == 1,
        reset_after_each: false,
        max_prepared: if flags & 2 == 2 { 8 } else { 0 },
        extra_tracked: &[],
        stats: &stats,
        timeouts: None,
        span: &span,
        fast_close: None,
        refuse_simple_query: flags & 4 == 4,
    };
    let mut session = Session::default();
    session.set_param("TimeZone", "UTC");
    session.set_param("application_name", "fuzz");
    let mut params = vec![("TimeZone".to_owned(), "UTC".to_owned())];
    let mut synced = None;
    let mut statements = BackendStatements::default();
    let mut t = Translation::new(crate::clock::now());
    let (mut client_in, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut backend_in, mut to_backend) = (BytesMut::new(), BytesMut::new());
    let mut client_fed = 0;

    while let Some((&header, tail)) = rest.split_first() {
        let len = (usize::from(header >> 1) + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let from_backend = header & 1 == 1;
        let backend = BackendSide {
            rbuf: &mut backend_in,
            wbuf: &mut to_backend,
            params: &mut params,
            synced: &mut synced,
            statements: &mut statements,
        };
        let result = if from_backend {
            backend.rbuf.extend_from_slice(chunk);
            t.backend(&mut session, &settings, &mut to_client, backend)
        } else {
            if t.client_done {
                continue;
            }
            client_fed += chunk.len();
            client_in.extend_from_slice(chunk);
            t.client(
                &mut session,
                &settings,
                &mut client_in,
                &mut to_client,
                backend,
            )
        };
        // The relay ends the stretch at the first error.
        if result.is_err() {
            return;
        }
        assert_framed(&to_client, t.from_backend.at_boundary(), "to the client");
        assert_framed(&to_backend, t.from_client.at_boundary(), "to the backend");
        assert_eq!(
            t.tally.bytes_received as usize + client_in.len(),
            client_fed,
            "client bytes lost or made up"
        );
    }
}

/// `out` is whole messages with sound lengths, but for a last one cut
/// short, which only a scanner half-way through a message may leave.
fn assert_framed(out: &[u8], at_boundary: bool, what: &str) {
    let mut at = 0;
    while at < out.len() {
        let Some((tag, len)) = frame::header(&out[at..]) else {
            assert!(!at_boundary, "{what}: a cut header at {at}");
            return;
        };
        assert!(
            len >= 4,
            "{what}: length {len} of {:?} at {at}",
            tag as char
        );
        let end = at + 1 + len as usize;
        if end > out.len() {
            assert!(!at_boundary, "{what}: {:?} at {at} cut short", tag as char);
            return;
        }
        at = end;
    }
}

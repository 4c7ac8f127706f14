//! Startup packets, and client and backend message streams.
//!
//! The two stream harnesses read a two-byte control prefix, then the bytes
//! of a connection: `[chunk, flags, stream...]`. `chunk` sets the sizes
//! the stream arrives in (to exercise messages split across reads), and
//! `flags` the visitor's mode. Each stream is translated twice, all at once
//! and in chunks; both must agree.

use bytes::BytesMut;
use pgdyno::prepared::{self, Statement};
use pgdyno::protocol::frame::{self, Scanner, Step, Visit};
use pgdyno::protocol::startup::{self, StartupPacket, MAX_STARTUP_LEN};
use pgdyno::protocol::{fields, write, TransactionStatus};

/// The untagged first packet: its length field, then the packet itself.
pub fn startup(data: &[u8]) {
    if let Some(Ok(len)) = startup::packet_len(data) {
        assert!((8..=MAX_STARTUP_LEN).contains(&len));
        if let Some(packet) = data.get(..len) {
            check_startup(packet);
        }
    }
    check_startup(data);
}

fn check_startup(packet: &[u8]) {
    let Ok(StartupPacket::Startup { minor, params }) = startup::parse(packet) else {
        return;
    };
    // What was read must read back the same once written again.
    let mut again = vec![0; 4];
    again.extend_from_slice(&((3 << 16) | i32::from(minor)).to_be_bytes());
    for (name, value) in &params {
        assert!(!name.is_empty() && !name.contains('\0') && !value.contains('\0'));
        again.extend_from_slice(name.as_bytes());
        again.push(0);
        again.extend_from_slice(value.as_bytes());
        again.push(0);
    }
    again.push(0);
    let len = again.len() as i32;
    again[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        startup::parse(&again),
        Ok(StartupPacket::Startup { minor, params })
    );
}

/// What a visitor saw, for comparing two translations of one stream.
#[derive(Debug, Default)]
struct Seen {
    visits: Vec<(u8, Vec<u8>)>,
    held: bool,
}

/// Translates `stream` whole and in chunks with visitors made by `make`;
/// both runs must see the same messages and write the same bytes.
fn translate_both<V: Visit + AsMut<Seen>>(
    control: u8,
    stream: &[u8],
    max_len: usize,
    make: impl Fn() -> V,
) {
    let whole = translate_chunks(&[stream], max_len, make());
    let size = usize::from(control % 64) + 1;
    let chunks: Vec<&[u8]> = stream.chunks(size).collect();
    let chunked = translate_chunks(&chunks, max_len, make());
    assert_eq!(whole, chunked, "chunks of {size} change the translation");
}

#[derive(Debug, PartialEq, Eq)]
struct Translation {
    out: Vec<u8>,
    left: Vec<u8>,
    error: Option<frame::BadLength>,
    seen: Vec<(u8, Vec<u8>)>,
    held: bool,
}

fn translate_chunks<V: Visit + AsMut<Seen>>(
    chunks: &[&[u8]],
    max_len: usize,
    mut visitor: V,
) -> Translation {
    let mut scanner = Scanner::default();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut error = None;
    for chunk in chunks {
        input.extend_from_slice(chunk);
        // After a Hold (Terminate) or an error, the relay reads no further.
        if visitor.as_mut().held || error.is_some() {
            continue;
        }
        match scanner.translate(&mut input, &mut out, max_len, &mut visitor) {
            Ok(0) => {}
            Ok(need) => {
                // It waits for exactly the rest of the message at the front.
                let (_, len) = frame::header(&input).expect("a header is there");
                assert_eq!(input.len() + need, 1 + len as usize);
                assert!(scanner.at_boundary());
            }
            Err(bad) => {
                assert!(bad.len < 4 || bad.len as usize > max_len);
                error = Some(bad);
            }
        }
    }
    let seen = std::mem::take(&mut visitor.as_mut().visits);
    Translation {
        out: out.to_vec(),
        left: input.to_vec(),
        error,
        seen,
        held: visitor.as_mut().held,
    }
}

/// A client's messages as pgdyno's relay sees them (`relay::requests`, whose
/// visitor is private): Parse, Bind, Describe, Close and short Queries held
/// whole when prepared statements are on, their names read and rewritten
/// as pgdyno rewrites them; Terminate holds.
struct FromClient {
    seen: Seen,
    prepared: bool,
}

impl AsMut<Seen> for FromClient {
    fn as_mut(&mut self) -> &mut Seen {
        &mut self.seen
    }
}

const SERVER_NAME: &str = "__pgdyno_0123456789abcdef0123456789abcdef";

impl Visit for FromClient {
    fn wants_body(&self, tag: u8, len: usize) -> bool {
        self.prepared && (matches!(tag, b'P' | b'B' | b'D' | b'C') || (tag == b'Q' && len <= 256))
    }

    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
        self.seen.visits.push((tag, body.to_vec()));
        if !self.prepared {
            return if tag == b'X' {
                self.seen.held = true;
                Step::Hold
            } else {
                Step::Forward
            };
        }
        match tag {
            b'P' => decode_parse(body, out),
            b'B' => decode_bind(body, out),
            b'D' => decode_statement_target(body, out, prepared::write_describe),
            b'C' => decode_statement_target(body, out, prepared::write_close),
            b'Q' => {
                if let Some((query, _)) = fields::cstr(body) {
                    let _ = std::str::from_utf8(query);
                }
                Step::Forward
            }
            b'X' => {
                self.seen.held = true;
                Step::Hold
            }
            _ => Step::Forward,
        }
    }
}

fn decode_parse(body: &[u8], out: &mut BytesMut) -> Step {
    let Some(p) = prepared::parse_body(body) else {
        return Step::Forward;
    };
    if p.name.is_empty() {
        return Step::Forward;
    }
    // The Parse pgdyno injects instead must carry the same query and types.
    let statement = Statement::new(p.query, p.types);
    let (tag, len) = frame::header(&statement.parse).unwrap();
    assert_eq!((tag, len as usize + 1), (b'P', statement.parse.len()));
    let injected = prepared::parse_body(&statement.parse[5..]).expect("injected Parse parses");
    assert_eq!(injected.name, statement.server_name.as_bytes());
    assert_eq!((injected.query, injected.types), (p.query, p.types));
    out.extend_from_slice(&statement.parse);
    Step::Drop
}

fn decode_bind(body: &[u8], out: &mut BytesMut) -> Step {
    match prepared::bind_statement(body) {
        Some(name) if !name.is_empty() => {
            let at = out.len();
            prepared::write_bind(out, body, SERVER_NAME);
            let written = &out[at..];
            let (tag, len) = frame::header(written).unwrap();
            assert_eq!((tag, len as usize + 1), (b'B', written.len()));
            let renamed = &written[5..];
            assert_eq!(
                prepared::bind_statement(renamed),
                Some(SERVER_NAME.as_bytes())
            );
            // Everything after the two names is passed on untouched.
            let (portal, rest) = fields::cstr(body).unwrap();
            let (_, rest) = fields::cstr(rest).unwrap();
            let (portal2, rest2) = fields::cstr(renamed).unwrap();
            let (_, rest2) = fields::cstr(rest2).unwrap();
            assert_eq!((portal, rest), (portal2, rest2));
            Step::Drop
        }
        _ => Step::Forward,
    }
}

fn decode_statement_target(
    body: &[u8],
    out: &mut BytesMut,
    write: fn(&mut BytesMut, &str),
) -> Step {
    let name = match body.split_first() {
        Some((b'S', rest)) => fields::cstr(rest)
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty()),
        _ => None,
    };
    match name {
        Some(_) => {
            write(out, SERVER_NAME);
            Step::Drop
        }
        None => Step::Forward,
    }
}

/// Client -> backend: `[chunk, flags, stream...]`; flags bit 0 turns named
/// prepared statements on (max_prepared_statements > 0), bit 1 lowers the
/// maximum message length to 1024 (max_packet_size's floor).
pub fn client_messages(data: &[u8]) {
    let [chunk, flags, stream @ ..] = data else {
        return;
    };
    let max_len = if flags & 2 != 0 { 1024 } else { 1 << 30 };
    translate_both(*chunk, stream, max_len, || FromClient {
        seen: Seen::default(),
        prepared: flags & 1 != 0,
    });
}

/// A backend's messages as pgdyno's relay and login read them
/// (`relay::responses`, `backend::login`): everything but DataRow,
/// CopyData, NoticeResponse and NotificationResponse held whole;
/// ParameterStatus, ReadyForQuery, ErrorResponse fields, BackendKeyData,
/// CommandComplete tags and authentication requests decoded.
struct FromBackend {
    seen: Seen,
}

impl AsMut<Seen> for FromBackend {
    fn as_mut(&mut self) -> &mut Seen {
        &mut self.seen
    }
}

impl Visit for FromBackend {
    fn wants_body(&self, tag: u8, _len: usize) -> bool {
        !matches!(tag, b'D' | b'd' | b'N' | b'A')
    }

    fn visit(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Step {
        self.seen.visits.push((tag, body.to_vec()));
        match tag {
            b'S' => {
                if let Some((name, value)) = fields::parameter_status(body) {
                    // Tracked parameters are told to the client again by
                    // pgdyno itself: what it writes must read the same.
                    let mut again = BytesMut::new();
                    write::parameter_status(&mut again, name, value);
                    assert_eq!(fields::parameter_status(&again[5..]), Some((name, value)));
                    out.extend_from_slice(&again);
                    return Step::Drop;
                }
            }
            b'Z' => {
                if let Some(status) = body.first().and_then(|&b| TransactionStatus::from_byte(b)) {
                    assert_eq!(TransactionStatus::from_byte(status.as_byte()), Some(status));
                }
            }
            b'E' => {
                let code = fields::error_field(body, b'C');
                let message = fields::error_field(body, b'M');
                let _ = fields::error_field(body, b'S');
                if let (Some(code), Some(message)) = (code, message) {
                    let mut again = BytesMut::new();
                    write::error_response(&mut again, write::Severity::Error, code, message);
                    assert_eq!(fields::error_field(&again[5..], b'C'), Some(code));
                    assert_eq!(fields::error_field(&again[5..], b'M'), Some(message));
                }
            }
            b'K' if body.len() == 8 => {
                let process_id = i32::from_be_bytes(body[..4].try_into().unwrap());
                let secret_key = i32::from_be_bytes(body[4..].try_into().unwrap());
                let mut again = BytesMut::new();
                write::backend_key_data(&mut again, process_id, secret_key);
                assert_eq!(&again[5..], body);
            }
            b'C' => {
                let _ = fields::cstr(body);
            }
            b'R' if body.len() >= 4 => {
                let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                if code == 10 {
                    let offered = body[4..].split(|&b| b == 0).count();
                    assert!(offered >= 1);
                }
            }
            _ => {}
        }
        Step::Forward
    }
}

/// Backend -> client: `[chunk, flags, stream...]` (flags unused; the
/// relay accepts backend messages of any length).
pub fn backend_messages(data: &[u8]) {
    let [chunk, _flags, stream @ ..] = data else {
        return;
    };
    translate_both(*chunk, stream, usize::MAX / 2, || FromBackend {
        seen: Seen::default(),
    });
}

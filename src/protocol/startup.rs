//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest.

use super::{CANCEL_REQUEST, GSSENC_REQUEST, SSL_REQUEST};

/// PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Startup {
        /// Minor protocol version the client asked for (3.x).
        minor: u16,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    BadLayout,
    #[error("invalid startup packet: parameters must be UTF-8")]
    NotUtf8,
}

/// The total length of the packet at the front of `buf`, once its length
/// field has arrived.
pub fn packet_len(buf: &[u8]) -> Option<Result<usize, StartupError>> {
    let len = i32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Some(Err(StartupError::BadLength));
    }
    Some(Ok(len as usize))
}

/// Parses one whole packet (length field included).
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::BadLength);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST if body.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if body.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if body.len() == 8 => Ok(StartupPacket::Cancel {
            process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::BadLength),
        _ => {
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                minor,
                params: parse_params(body)?,
            })
        }
    }
}

fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    // name\0value\0 ... \0
    let Some((&0, pairs)) = body.split_last() else {
        return Err(StartupError::BadLayout);
    };
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let Some((&0, pairs)) = pairs.split_last() else {
        return Err(StartupError::BadLayout);
    };
    let mut strings = pairs.split(|&b| b == 0);
    let mut params = Vec::new();
    while let Some(name) = strings.next() {
        let value = strings.next().ok_or(StartupError::BadLayout)?;
        let name = std::str::from_utf8(name).map_err(|_| StartupError::NotUtf8)?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::NotUtf8)?;
        if name.is_empty() {
            return Err(StartupError::BadLayout);
        }
        params.push((name.to_owned(), value.to_owned()));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn startup_params() {
        let p = packet(196_608, b"user\0alice\0database\0db\0\0");
        assert_eq!(
            parse(&p).unwrap(),
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "db".into())
                ]
            }
        );
        assert_eq!(packet_len(&p), Some(Ok(p.len())));
    }

    #[test]
    fn special_packets() {
        assert_eq!(
            parse(&packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        let c = parse(&packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9])).unwrap();
        assert_eq!(
            c,
            StartupPacket::Cancel {
                process_id: 7,
                secret_key: 9
            }
        );
    }

    #[test]
    fn malformed() {
        assert!(parse(&packet(196_608, b"user\0alice\0db")).is_err());
        assert!(parse(&packet(196_608, b"user\0alice\0\0")).is_ok());
        assert!(parse(&packet(196_608, b"user\0\0")).is_err());
        assert!(parse(&packet(196_608, b"\xff\0x\0\0")).is_err());
        assert!(matches!(
            parse(&packet(2 << 16, b"\0")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert_eq!(
            packet_len(&[0, 0, 0, 4]),
            Some(Err(StartupError::BadLength))
        );
        assert_eq!(
            packet_len(&[0, 1, 0, 0]),
            Some(Err(StartupError::BadLength))
        );
        assert_eq!(packet_len(&[0, 0]), None);
    }
}

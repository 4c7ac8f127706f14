//! All byte-level work on the PostgreSQL v3 wire protocol.
//!
//! - [`frame`]: finding message boundaries in a read buffer without parsing
//!   bodies (the hot path);
//! - [`startup`]: the untagged first packet (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest);
//! - [`write`]: the backend messages pgdyno itself sends to clients
//!   (authentication requests, ParameterStatus, ErrorResponse, ...);
//! - [`fields`]: reading the few message bodies whose contents drive state.
//!
//! Nothing here does I/O.

pub mod fields;
pub mod frame;
pub mod startup;
pub mod write;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_V3: i32 = 196_608;
/// The magic "protocol versions" of the special startup packets.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// Transaction status byte carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TransactionStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

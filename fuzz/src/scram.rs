//! Both sides of SCRAM-SHA-256 (`pgdyno::auth::scram`) fed arbitrary
//! messages from the other side, and complete exchanges between honest
//! peers over arbitrary channel-binding data.
//!
//! Input: `[mode, first, 0, final]`. A nonce can only be echoed by a peer
//! that has seen it, so a `\x01` byte in the second message of either side
//! stands for the nonce its first message carried (the recorder writes
//! seeds that way). The secret has 16 iterations and a fixed salt
//! (base64 `cGdkeW5vLWZ1enotc2FsdA==`) so that executions stay fast.

use std::sync::OnceLock;

use pgdyno::auth::scram::{
    Binding, ClientBinding, KeyExchange, KeyProof, ScramError, ScramKeys, ScramSecret,
    ServerExchange,
};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

const PASSWORD: &str = "pgdyno-fuzz";
const SALT: &[u8] = b"pgdyno-fuzz-salt";
const ITERATIONS: u32 = 16;
/// A tls-server-end-point hash, for the modes with channel binding.
const END_POINT: [u8; 32] = [7; 32];

/// The secret, and the ClientKey a login with its password proves,
/// learnt as pgdyno learns it: from a real client's login.
fn keys() -> &'static ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = ScramSecret::with_salt(PASSWORD, SALT, ITERATIONS);
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
        let (server, first) =
            ServerExchange::start(client.message(), &secret, Binding::Unsupported).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (last, client_key) = server.finish(client.message(), &secret).unwrap();
        client.finish(last.as_bytes()).unwrap();
        ScramKeys { client_key, secret }
    })
}

fn split_messages(rest: &[u8]) -> (&[u8], &[u8]) {
    match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[]),
    }
}

/// `message` with its first `\x01` replaced by `nonce`.
fn with_nonce(message: &[u8], nonce: &str) -> Vec<u8> {
    match message.iter().position(|&b| b == 1) {
        Some(i) => [&message[..i], nonce.as_bytes(), &message[i + 1..]].concat(),
        None => message.to_vec(),
    }
}

/// The `r=` attribute of a SCRAM message.
fn nonce_of(message: &str) -> &str {
    message
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .expect("our own message carries a nonce")
}

/// The server side: mode % 3 picks the channel binding the client chose
/// (unsupported, offered but not chosen, chosen); mode & 4 runs an honest
/// exchange instead, whose channel-binding data is the rest of the input.
pub fn scram_server(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode & 4 != 0 {
        return honest_exchange(*mode, rest);
    }
    let binding = match mode % 3 {
        0 => Binding::Unsupported,
        1 => Binding::NotChosen,
        _ => Binding::Chosen(&END_POINT),
    };
    let (first, last) = split_messages(rest);
    let secret = &keys().secret;
    let Ok((server, server_first)) = ServerExchange::start(first, secret, binding) else {
        return;
    };
    let nonce = nonce_of(&server_first);
    assert!(server_first.starts_with("r="));
    let last = with_nonce(last, nonce);
    // Only a client that knows the password (or its ClientKey) passes.
    match server.finish(&last, secret) {
        Ok((server_final, key)) => {
            assert!(server_final.starts_with("v="));
            assert_eq!(key, keys().client_key);
        }
        Err(ScramError::Malformed(why)) => assert!(!why.is_empty()),
        Err(ScramError::WrongProof) => {}
    }
}

/// pgdyno's KeyExchange (mode & 8) or postgres-protocol's client logs in
/// to ServerExchange binding `cb`; it must succeed, and a message changed
/// by one byte (mode & 16, the byte at `cb[0]`) must make it fail.
fn honest_exchange(mode: u8, cb: &[u8]) {
    let secret = &keys().secret;
    let bound = !cb.is_empty() && mode & 1 != 0;
    let binding = if bound {
        Binding::Chosen(cb)
    } else {
        Binding::Unsupported
    };
    let tamper = |message: &mut Vec<u8>| {
        if mode & 16 != 0 && !message.is_empty() {
            let at = usize::from(cb.first().copied().unwrap_or(0)) % message.len();
            message[at] ^= 1;
            true
        } else {
            false
        }
    };
    if mode & 8 != 0 {
        let client_binding = if bound {
            ClientBinding::EndPoint(cb.to_vec())
        } else {
            ClientBinding::None
        };
        let (mut client, first) =
            KeyExchange::start(KeyProof::Keys(keys().clone()), client_binding);
        let (server, server_first) =
            ServerExchange::start(first.as_bytes(), secret, binding).expect("our first message");
        let mut last = client
            .update(server_first.as_bytes())
            .expect("the server's first message")
            .into_bytes();
        let tampered = tamper(&mut last);
        match server.finish(&last, secret) {
            Ok((server_final, key)) => {
                assert!(!tampered, "a changed client-final-message was accepted");
                assert_eq!(key, keys().client_key);
                assert_eq!(client.finish(server_final.as_bytes()), Ok(()));
            }
            Err(e) => assert!(tampered, "an honest login failed: {e:?}"),
        }
    } else {
        let cb_client = if bound {
            ChannelBinding::tls_server_end_point(cb.to_vec())
        } else {
            ChannelBinding::unsupported()
        };
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), cb_client);
        let (server, server_first) =
            ServerExchange::start(client.message(), secret, binding).expect("a real client");
        client.update(server_first.as_bytes()).unwrap();
        let mut last = client.message().to_vec();
        let tampered = tamper(&mut last);
        match server.finish(&last, secret) {
            Ok((server_final, key)) => {
                assert!(!tampered, "a changed client-final-message was accepted");
                assert_eq!(key, keys().client_key);
                client.finish(server_final.as_bytes()).unwrap();
            }
            Err(e) => assert!(tampered, "an honest login failed: {e:?}"),
        }
    }
}

/// The client side (pgdyno logging in to PostgreSQL with a ClientKey):
/// mode % 3 picks its channel binding (none, unused, tls-server-end-point).
pub fn scram_client(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let binding = match mode % 3 {
        0 => ClientBinding::None,
        1 => ClientBinding::Unused,
        _ => ClientBinding::EndPoint(END_POINT.to_vec()),
    };
    let (first, last) = split_messages(rest);
    let (mut client, client_first) = KeyExchange::start(KeyProof::Keys(keys().clone()), binding);
    let server_first = with_nonce(first, nonce_of(&client_first));
    let Ok(client_final) = client.update(&server_first) else {
        return;
    };
    assert!(client_final.starts_with("c=") && client_final.contains(",p="));
    // Nobody without the ServerKey can sign: arbitrary bytes never pass.
    assert!(client.finish(last).is_err());
}

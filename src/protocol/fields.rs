//! Reading the few message bodies whose contents drive pgdyno's state.

/// Splits the first NUL-terminated string off `body`.
pub fn cstr(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    Some((&body[..end], &body[end + 1..]))
}

/// ParameterStatus: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

/// One field of an ErrorResponse or NoticeResponse (`b'C'` for the SQLSTATE,
/// `b'M'` for the message, `b'S'` for the severity).
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let (value, next) = cstr(after)?;
        if code == field {
            return std::str::from_utf8(value).ok();
        }
        rest = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_fields() {
        let body = b"SERROR\0C42P01\0Mrelation does not exist\0\0";
        assert_eq!(error_field(body, b'C'), Some("42P01"));
        assert_eq!(error_field(body, b'M'), Some("relation does not exist"));
        assert_eq!(error_field(body, b'D'), None);
        assert_eq!(error_field(b"C42", b'C'), None);
    }

    #[test]
    fn reads_parameter_status() {
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Some(("TimeZone", "UTC"))
        );
        assert_eq!(parameter_status(b"TimeZone\0UTC"), None);
    }
}

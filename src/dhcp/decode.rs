//! Turning bytes from the wire into a `Message`, refusing what the decoder
//! cannot take safely.
//!
//! dhcproto checks a few fixed-size options only with `debug_assert!`, so a
//! hostile packet panics a debug build (the fuzzer found it). Lengths are checked
//! here first, summed per option code because the decoder concatenates repeated
//! options (RFC 3396).

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};

/// Fixed BOOTP header, then the magic cookie.
const OPTIONS_START: usize = 240;

/// (code, accepted total length): what dhcproto asserts on.
fn length_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,        // rapid commit
        81 => len >= 3,        // client FQDN
        94 => len == 3,        // client network interface
        152..=155 => len == 4, // bulk leasequery times
        _ => true,
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("option {code} has length {len}, which the protocol does not allow")]
    BadOptionLength { code: u8, len: usize },
    #[error("not a DHCP message: {0}")]
    Malformed(String),
}

pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut totals = [0usize; 256];
    let mut i = OPTIONS_START;
    while i < buf.len() {
        let code = buf[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let Some(&len) = buf.get(i + 1) else { break };
                totals[code as usize] += len as usize;
                i += 2 + len as usize;
            }
        }
    }
    for (code, &len) in totals.iter().enumerate() {
        if len > 0 || code == 80 {
            let present = len > 0 || option_present(buf, code as u8);
            if present && !length_ok(code as u8, len) {
                return Err(DecodeError::BadOptionLength {
                    code: code as u8,
                    len,
                });
            }
        }
    }
    Message::decode(&mut Decoder::new(buf)).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Whether a zero-length option appears at all (rapid commit is present with len 0).
fn option_present(buf: &[u8], wanted: u8) -> bool {
    let mut i = OPTIONS_START;
    while i < buf.len() {
        match buf[i] {
            0 => i += 1,
            255 => return false,
            code => {
                if code == wanted {
                    return true;
                }
                let Some(&len) = buf.get(i + 1) else {
                    return false;
                };
                i += 2 + len as usize;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType, Opcode};
    use dhcproto::{Encodable, Encoder};

    fn discover() -> Vec<u8> {
        let mut m = Message::new_with_id(
            1,
            [0; 4].into(),
            [0; 4].into(),
            [0; 4].into(),
            [0; 4].into(),
            &[1, 2, 3, 4, 5, 6],
        );
        m.set_opcode(Opcode::BootRequest);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let mut out = vec![];
        m.encode(&mut Encoder::new(&mut out)).unwrap();
        out
    }

    fn with_option(code: u8, value: &[u8]) -> Vec<u8> {
        let mut b = discover();
        let end = b.iter().rposition(|&x| x == 255).unwrap();
        let mut opt = vec![code, value.len() as u8];
        opt.extend_from_slice(value);
        b.splice(end..end, opt);
        b
    }

    #[test]
    fn good_packets_decode() {
        assert!(decode(&discover()).is_ok());
        assert!(decode(&with_option(94, &[1, 2, 0])).is_ok());
        assert!(decode(&with_option(80, &[])).is_ok());
    }

    #[test]
    fn lengths_the_decoder_would_assert_on_are_refused() {
        // The crash the fuzzer found: a bulk-leasequery time that is not 4 bytes.
        assert_eq!(
            decode(&with_option(155, &[1, 2])),
            Err(DecodeError::BadOptionLength { code: 155, len: 2 })
        );
        assert!(decode(&with_option(94, &[1, 2])).is_err());
        assert!(decode(&with_option(80, &[1])).is_err());
        assert!(decode(&with_option(81, &[1])).is_err());
        // Repeated options are concatenated by the decoder: the sum counts.
        let twice = {
            let b = with_option(94, &[1, 2, 0]);
            let end = b.iter().rposition(|&x| x == 255).unwrap();
            let mut b2 = b.clone();
            b2.splice(end..end, vec![94, 3, 1, 2, 0]);
            b2
        };
        assert!(decode(&twice).is_err());
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let good = discover();
        for len in 0..good.len() {
            let _ = decode(&good[..len]);
        }
        assert!(decode(&[0xff; 300]).is_err() || decode(&[0xff; 300]).is_ok());
    }
}

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

/// The DHCP message type (option 53) read straight from the bytes, without
/// decoding the packet: under overload the socket loop sheds DISCOVERs on this
/// alone, so a shed packet costs a scan of its options, not a decode. `None`
/// when the packet is not plainly a DHCP message with one type (no cookie, a
/// truncated option, option overload into `file`/`sname`): those get the full
/// decode and its verdict.
pub fn message_type_hint(buf: &[u8]) -> Option<u8> {
    if buf.get(236..OPTIONS_START) != Some(&[99, 130, 83, 99][..]) {
        return None;
    }
    let mut found = None;
    let mut i = OPTIONS_START;
    while let Some(&code) = buf.get(i) {
        match code {
            0 => i += 1,
            255 => return found,
            // Option overload: more options (perhaps a type) hide in file/sname.
            52 => return None,
            _ => {
                let len = *buf.get(i + 1)? as usize;
                let value = buf.get(i + 2..i + 2 + len)?;
                if code == 53 {
                    if len != 1 || found.is_some() {
                        return None;
                    }
                    found = Some(value[0]);
                }
                i += 2 + len;
            }
        }
    }
    None
}

pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    // The decoder joins a run of adjacent options with the same code into one
    // (RFC 3396) and decodes each run on its own: check runs, not single TLVs.
    let check = |run: Option<(u8, usize)>| match run {
        Some((code, len)) if !length_ok(code, len) => {
            Err(DecodeError::BadOptionLength { code, len })
        }
        _ => Ok(()),
    };
    let mut run: Option<(u8, usize)> = None;
    let mut i = OPTIONS_START;
    while i < buf.len() {
        let code = buf[i];
        if code == 0 || code == 255 {
            check(run.take())?;
            if code == 255 {
                break;
            }
            i += 1;
            continue;
        }
        let len = buf.get(i + 1).copied().unwrap_or(0) as usize;
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            other => {
                check(other)?;
                Some((code, len))
            }
        };
        i += 2 + len;
    }
    check(run)?;
    Message::decode(&mut Decoder::new(buf)).map_err(|e| DecodeError::Malformed(e.to_string()))
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
    fn the_message_type_is_read_without_decoding_and_only_when_plain() {
        let d = discover();
        assert_eq!(message_type_hint(&d), Some(1));
        assert_eq!(
            decode(&d).unwrap().opts().msg_type(),
            Some(MessageType::Discover)
        );
        // Other options around it change nothing.
        assert_eq!(message_type_hint(&with_option(12, b"node1")), Some(1));
        let end = d.iter().rposition(|&x| x == 255).unwrap();
        // Cut inside an option, no end mark, no cookie, too short: no hint.
        assert_eq!(message_type_hint(&d[..end - 1]), None);
        assert_eq!(message_type_hint(&d[..end]), None);
        let mut no_cookie = d.clone();
        no_cookie[236] = 0;
        assert_eq!(message_type_hint(&no_cookie), None);
        assert_eq!(message_type_hint(&d[..100]), None);
        assert_eq!(message_type_hint(&[]), None);
        // A second type, a type of the wrong length, option overload: no hint.
        assert_eq!(message_type_hint(&with_option(53, &[3])), None);
        let mut two_bytes = d.clone();
        let at = (OPTIONS_START..d.len()).find(|&i| d[i] == 53).unwrap();
        two_bytes[at + 1] = 2;
        assert_eq!(message_type_hint(&two_bytes), None);
        assert_eq!(message_type_hint(&with_option(52, &[1])), None);
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
        // Zero-length forms count too (the fuzzer's second find).
        assert!(decode(&with_option(94, &[])).is_err());
        assert!(decode(&with_option(155, &[])).is_err());
        // Repeated options are concatenated by the decoder: the sum counts.
        let twice = {
            let b = with_option(94, &[1, 2, 0]);
            let end = b.iter().rposition(|&x| x == 255).unwrap();
            let mut b2 = b.clone();
            b2.splice(end..end, vec![94, 3, 1, 2, 0]);
            b2
        };
        assert!(decode(&twice).is_err());
        // ...but a pad between two of them makes two options, each checked alone.
        let split = {
            let b = with_option(81, &[0, 0, 0, 3, b'a', b'b', b'c']);
            let end = b.iter().rposition(|&x| x == 255).unwrap();
            let mut b2 = b.clone();
            b2.splice(end..end, vec![0, 81, 0]);
            b2
        };
        assert_eq!(
            decode(&split).unwrap_err(),
            DecodeError::BadOptionLength { code: 81, len: 0 }
        );
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

//! Ethernet MAC addresses: the one parser every part of rollout uses.
//!
//! MACs reach us from operators (config, CLI, admin API: pasted from BMCs and
//! switch CLIs with `:` or `-`), from iPXE scripts and from the kernel command line
//! (where pxelinux-style `01-` hardware-type prefixes occur). They are compared and
//! stored in one form, lower-case with colons, which is what [`MacAddr`] displays.

use std::fmt;
use std::str::FromStr;

/// Six bytes of a hardware address. Displays (and serialises) as `52:54:00:ab:cd:ef`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address: expected six hex bytes like 52:54:00:12:34:56 (`-` works too, as does the PXE form 01-52-54-00-12-34-56)")]
pub struct MacParseError {
    pub input: String,
}

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> Self {
        mac.0
    }
}

/// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` in any case (separators may
/// be mixed), surrounding whitespace, and the pxelinux form `01-aa-bb-cc-dd-ee-ff`
/// (ARP hardware type 1 = Ethernet in front). Every byte must be exactly two hex
/// digits.
///
/// The bare form `aabbccddeeff` is refused on purpose: `rollout node show NAME`
/// takes a hostname or a MAC, and a 12-hex-digit hostname would otherwise be read
/// as a MAC.
impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_string(),
        };
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        let parts = match parts.len() {
            6 => &parts[..],
            7 if parts[0] == "01" => &parts[1..],
            _ => return Err(err()),
        };
        let mut out = [0u8; 6];
        for (byte, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The lower-case colon form of `s`, or `None` if it is not a MAC address (any
/// form [`MacAddr`] parses).
pub fn normalize(s: &str) -> Option<String> {
    s.parse::<MacAddr>().ok().map(|m| m.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);

    #[test]
    fn accepts_every_form_operators_and_firmware_use() {
        for s in [
            "52:54:00:ab:cd:01",
            "52:54:00:AB:CD:01",
            "52-54-00-ab-cd-01",
            "52-54-00-AB-cd-01",
            "52:54-00:ab-cd:01",
            "  52:54:00:ab:cd:01\n",
            "01-52-54-00-ab-cd-01",
            "01:52:54:00:AB:CD:01",
        ] {
            assert_eq!(s.parse::<MacAddr>(), Ok(MAC), "{s:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_six_two_digit_hex_bytes() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "02-52-54-00-ab-cd-01", // only hardware type 1 (Ethernet) may prefix
            "zz:54:00:ab:cd:01",
            "52:54:00:0a:0b:0g",
            "5:54:00:ab:cd:01",
            "052:54:00:ab:cd:01",
            "52:54:00:ab:cd:+1",
            "52::54:00:ab:cd",
            "52.54.00.ab.cd.01",
            "525400abcd01", // a hostname could look like this
            "5254.00ab.cd01",
        ] {
            let e = s.parse::<MacAddr>().unwrap_err();
            assert_eq!(e.input, s);
            assert!(e.to_string().contains("52:54:00:12:34:56"), "{e}");
        }
    }

    #[test]
    fn displays_lower_case_with_colons() {
        assert_eq!(MAC.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(
            MacAddr::from([0xff, 0, 1, 2, 3, 0xa]).to_string(),
            "ff:00:01:02:03:0a"
        );
        assert_eq!(
            normalize("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(normalize("52:54:00:ab:cd"), None);
        assert_eq!(<[u8; 6]>::from(MAC), [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]);
    }

    #[test]
    fn serde_uses_the_display_form_and_the_parser() {
        assert_eq!(
            serde_json::to_string(&MAC).unwrap(),
            "\"52:54:00:ab:cd:01\""
        );
        let back: MacAddr = serde_json::from_str("\"52-54-00-AB-CD-01\"").unwrap();
        assert_eq!(back, MAC);
        let e = serde_json::from_str::<MacAddr>("\"nope\"").unwrap_err();
        assert!(e.to_string().contains("not a MAC address"), "{e}");
    }
}

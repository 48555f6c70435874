//! Content digests as written on the wire and in flags: `sha256:<64 lowercase hex digits>` (the
//! OCI form). One type, so that the control plane that names an archive and the shim that checks
//! it parse, print and compare digests the same way. It hashes bytes and nothing else.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest {given:?} is not valid: {why}; expected sha256:<64 hex digits>")]
pub struct DigestError {
    pub given: String,
    pub why: &'static str,
}

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// From 64 hex digits without the `sha256:` prefix (as the registry's records keep it).
    pub fn from_hex(hex: &str) -> Result<Sha256Digest, DigestError> {
        let bad = |why| DigestError {
            given: hex.to_string(),
            why,
        };
        if hex.len() != 64 {
            return Err(bad("the hex part must be 64 digits long"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(bad("it holds a character that is not a hex digit")),
            }
        }
        Ok(Sha256Digest(out))
    }

    /// The 64 lowercase hex digits, without the prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first hex digits, for progress lines (`sha256:abcd1234…`).
    pub fn short(&self) -> String {
        format!("sha256:{}…", &self.hex()[..12])
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = DigestError;

    /// `sha256:HEX`; the algorithm name is required, so that another algorithm is refused by
    /// name rather than misread.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError {
                given: s.to_string(),
                why: "it has no algorithm prefix",
            });
        };
        if !algo.eq_ignore_ascii_case("sha256") {
            return Err(DigestError {
                given: s.to_string(),
                why: "only sha256 is supported",
            });
        }
        Sha256Digest::from_hex(hex).map_err(|e| DigestError {
            given: s.to_string(),
            why: e.why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let d = Sha256Digest::of(b"abc");
        let text = d.to_string();
        assert_eq!(
            text,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text.parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Sha256Digest>(),
            Ok(d)
        );
        assert_eq!(Sha256Digest::from_hex(&d.hex()).unwrap(), d);
        assert_eq!(d.short(), "sha256:ba7816bf8f01…");
        for (bad, why) in [
            ("ba7816bf", "prefix"),
            ("md5:ba7816bf8f01cfea414140de5dae2223", "only sha256"),
            ("sha256:ba78", "64 digits"),
            (
                "sha256:zz7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "hex digit",
            ),
            ("", "prefix"),
        ] {
            let e = bad.parse::<Sha256Digest>().unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("sha256:<64 hex"),
                "{bad}: {e}"
            );
        }
        // Multi-byte characters of the right byte length are refused, not sliced.
        let odd = format!("sha256:{}", "é".repeat(32));
        assert!(odd.parse::<Sha256Digest>().is_err());
    }
}

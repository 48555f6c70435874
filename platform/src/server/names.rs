//! Names and times the API hands out: Flow IDs in JCloud's `adjective-animal-hex10` shape, API
//! tokens, and ISO-8601 wall-clock timestamps (the one place the control plane reads wall time:
//! `ctime`/`utime` are reported to users, never used for timers).

use sha2::{Digest, Sha256};

const ADJECTIVES: &[&str] = &[
    "merry", "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
    "nice", "proud", "quick", "silly", "witty", "zesty", "bold", "bright", "clever", "daring",
    "fair", "glad", "keen", "lucky", "mellow", "noble", "plucky", "quiet", "rapid", "sunny",
    "tidy", "vivid",
];
const ANIMALS: &[&str] = &[
    "magpie", "otter", "badger", "beaver", "falcon", "gecko", "heron", "ibis", "jaguar", "koala",
    "lemur", "marten", "newt", "ocelot", "panda", "quail", "raven", "salmon", "tapir", "urchin",
    "vole", "walrus", "yak", "zebra", "bison", "crane", "dingo", "egret", "ferret", "gibbon",
    "hare", "iguana",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new Flow or Deployment ID, e.g. `merry-magpie-82b9c0897f`.
pub fn new_id() -> String {
    let r: [u8; 7] = rand::random();
    let adj = ADJECTIVES[r[0] as usize % ADJECTIVES.len()];
    let animal = ANIMALS[r[1] as usize % ANIMALS.len()];
    format!("{adj}-{animal}-{}", &hex(&r[2..])[..10])
}

/// A new API token: 32 random bytes as hex, prefixed so it is recognisable in a config file.
pub fn new_token() -> String {
    let r: [u8; 32] = rand::random();
    format!("zf_{}", hex(&r))
}

/// What the store keeps of a token: its SHA-256, so a leaked database file leaks no token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Now, as `2024-01-31T10:00:00.123456+00:00` (UTC): what Python's
/// `datetime.strptime(s, '%Y-%m-%dT%H:%M:%S.%f%z')` reads.
pub fn now_iso() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    iso_from_unix(now.as_secs() as i64, now.subsec_micros())
}

pub fn iso_from_unix(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_jcloud_ids() {
        let id = new_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[2].len(), 10);
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn timestamps_are_iso_8601_utc() {
        assert_eq!(iso_from_unix(0, 0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso_from_unix(1_709_210_096, 42),
            "2024-02-29T12:34:56.000042+00:00"
        );
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let t = new_token();
        assert_ne!(token_hash(&t), t);
        assert_eq!(token_hash(&t).len(), 64);
    }
}

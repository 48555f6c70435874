//! The shim's ready line: one line on its stdout, the moment its Executor serves, that tells the
//! local runtime where the replica listens. The runtime reads readiness from it instead of
//! polling.

use std::fmt;
use std::str::FromStr;

/// `ZEROFLOW_READY grpc=HOST:PORT admin=HOST:PORT startup_ms=N`: the shim prints it (with
/// [`Display`](fmt::Display)) once its Executor serves, and the runtime parses it (with
/// [`FromStr`]). Fields are `key=value` words; unknown keys are skipped, so a newer shim can add
/// one without breaking an older runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// Where the shim serves the Executor's gRPC (what the gateway calls).
    pub grpc: String,
    /// Where the shim serves `/ready`, `/stats` and `/metrics`.
    pub admin: String,
    /// From the shim's start to its Executor serving.
    pub startup_ms: u64,
}

impl ReadyLine {
    /// The line's first word.
    pub const PREFIX: &'static str = "ZEROFLOW_READY";

    /// Whether `line` claims to be a ready line (starts with [`ReadyLine::PREFIX`] as a word),
    /// well-formed or not: output lines that do not are the Executor's own.
    pub fn claims(line: &str) -> bool {
        line.split_whitespace().next() == Some(Self::PREFIX)
    }
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} grpc={} admin={} startup_ms={}",
            Self::PREFIX,
            self.grpc,
            self.admin,
            self.startup_ms
        )
    }
}

/// Why a line is not a well-formed ready line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyLineError {
    #[error("not a ready line: it does not start with {}", ReadyLine::PREFIX)]
    NotReadyLine,
    #[error("the ready line has no {0}= field")]
    Missing(&'static str),
    #[error("the ready line's {key}= is empty")]
    Empty { key: &'static str },
    #[error("the ready line gives {key}= twice")]
    Repeated { key: &'static str },
    #[error("the ready line's word {0:?} is not key=value")]
    NotKeyValue(String),
    #[error("the ready line's startup_ms={0:?} is not a whole number of milliseconds")]
    BadStartup(String),
}

impl FromStr for ReadyLine {
    type Err = ReadyLineError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        if words.next() != Some(Self::PREFIX) {
            return Err(ReadyLineError::NotReadyLine);
        }
        let (mut grpc, mut admin, mut startup) = (None, None, None);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| ReadyLineError::NotKeyValue(word.to_string()))?;
            let (name, slot) = match key {
                "grpc" => ("grpc", &mut grpc),
                "admin" => ("admin", &mut admin),
                "startup_ms" => ("startup_ms", &mut startup),
                _ => continue,
            };
            if value.is_empty() {
                return Err(ReadyLineError::Empty { key: name });
            }
            if slot.replace(value).is_some() {
                return Err(ReadyLineError::Repeated { key: name });
            }
        }
        let startup = startup.ok_or(ReadyLineError::Missing("startup_ms"))?;
        Ok(ReadyLine {
            grpc: grpc.ok_or(ReadyLineError::Missing("grpc"))?.to_string(),
            admin: admin.ok_or(ReadyLineError::Missing("admin"))?.to_string(),
            startup_ms: startup
                .parse()
                .map_err(|_| ReadyLineError::BadStartup(startup.to_string()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(grpc: &str, admin: &str, startup_ms: u64) -> ReadyLine {
        ReadyLine {
            grpc: grpc.into(),
            admin: admin.into(),
            startup_ms,
        }
    }

    #[test]
    fn what_the_shim_prints_the_runtime_reads_back() {
        for l in [
            line("127.0.0.1:40123", "127.0.0.1:40124", 0),
            line("[::1]:8080", "[::1]:8090", 122),
            line("10.0.0.7:8080", "10.0.0.7:8090", u64::MAX),
        ] {
            let text = l.to_string();
            assert!(ReadyLine::claims(&text), "{text}");
            assert_eq!(text.parse::<ReadyLine>(), Ok(l), "{text}");
        }
    }

    #[test]
    fn the_wire_format_is_unchanged() {
        // What shims and runtimes of earlier builds print and read.
        let l = line("127.0.0.1:1", "127.0.0.1:2", 5);
        assert_eq!(
            l.to_string(),
            "ZEROFLOW_READY grpc=127.0.0.1:1 admin=127.0.0.1:2 startup_ms=5"
        );
    }

    #[test]
    fn unknown_fields_and_extra_spaces_are_skipped() {
        let l: ReadyLine = "ZEROFLOW_READY  pid=7 grpc=a:1 admin=a:2  startup_ms=3 zygote=true"
            .parse()
            .unwrap();
        assert_eq!(l, line("a:1", "a:2", 3));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        use ReadyLineError::*;
        let cases: &[(&str, ReadyLineError)] = &[
            ("", NotReadyLine),
            ("INFO executor started", NotReadyLine),
            ("ZEROFLOW_READYgrpc=a:1", NotReadyLine),
            (
                "zeroflow_ready grpc=a:1 admin=a:2 startup_ms=1",
                NotReadyLine,
            ),
            ("ZEROFLOW_READY", Missing("startup_ms")),
            ("ZEROFLOW_READY admin=a:2 startup_ms=1", Missing("grpc")),
            ("ZEROFLOW_READY grpc=a:1 startup_ms=1", Missing("admin")),
            ("ZEROFLOW_READY grpc=a:1 admin=a:2", Missing("startup_ms")),
            (
                "ZEROFLOW_READY grpc= admin=a:2 startup_ms=1",
                Empty { key: "grpc" },
            ),
            (
                "ZEROFLOW_READY grpc=a:1 grpc=b:1 admin=a:2 startup_ms=1",
                Repeated { key: "grpc" },
            ),
            (
                "ZEROFLOW_READY grpc=a:1 admin a:2 startup_ms=1",
                NotKeyValue("admin".into()),
            ),
            (
                "ZEROFLOW_READY grpc=a:1 admin=a:2 startup_ms=-1",
                BadStartup("-1".into()),
            ),
            (
                "ZEROFLOW_READY grpc=a:1 admin=a:2 startup_ms=1.5",
                BadStartup("1.5".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ReadyLine>().as_ref(), Err(want), "{text:?}");
            assert!(!want.to_string().is_empty());
        }
        assert!(ReadyLine::claims("ZEROFLOW_READY grpc="));
        assert!(!ReadyLine::claims("ZEROFLOW_READYx"));
    }
}

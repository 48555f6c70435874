//! The Jina wire protocol as tonic/prost types: the messages and services that `jina.Client`,
//! `jina gateway` and `jina executor` speak, plus a pass-through codec for proxies.
//! This crate holds no logic beyond small constructors.

#[allow(clippy::all)]
pub mod docarray {
    tonic::include_proto!("docarray");
}

#[allow(non_camel_case_types, clippy::all)]
pub mod jina {
    tonic::include_proto!("jina");
}

pub mod raw;

/// The encoded descriptor set of `jina.proto` and `docarray.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jina_descriptor");

/// The largest message Jina allows is unbounded (`grpc.max_*_message_length = -1`); tonic's
/// default 4 MiB decode cap would reject documents jina itself accepts.
pub const MAX_MESSAGE_SIZE: usize = usize::MAX;

pub use jina::{DataRequestProto, HeaderProto, RouteProto, StatusProto};

impl StatusProto {
    /// An ERROR status the way jina reports an Executor exception, so that `jina.Client` raises
    /// `BadServer` with this text.
    pub fn error(executor: &str, name: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        StatusProto {
            code: jina::status_proto::StatusCode::Error as i32,
            description: description.clone(),
            exception: Some(jina::status_proto::ExceptionProto {
                name: name.to_string(),
                args: vec![description],
                stacks: vec![],
                executor: executor.to_string(),
            }),
        }
    }

    pub fn is_error(&self) -> bool {
        self.code == jina::status_proto::StatusCode::Error as i32
    }
}

impl DataRequestProto {
    /// True when the request carries an ERROR status (an Executor raised).
    pub fn is_error(&self) -> bool {
        self.header
            .as_ref()
            .and_then(|h| h.status.as_ref())
            .is_some_and(|s| s.is_error())
    }

    pub fn exec_endpoint(&self) -> &str {
        self.header
            .as_ref()
            .and_then(|h| h.exec_endpoint.as_deref())
            .unwrap_or("/")
    }
}

/// gRPC method paths, as `/package.Service/method`.
pub mod paths {
    pub const CALL: &str = "/jina.JinaRPC/Call";
    pub const PROCESS_SINGLE_DATA: &str = "/jina.JinaSingleDataRequestRPC/process_single_data";
    pub const PROCESS_DATA: &str = "/jina.JinaDataRequestRPC/process_data";
    pub const ENDPOINT_DISCOVERY: &str = "/jina.JinaDiscoverEndpointsRPC/endpoint_discovery";
    pub const DRY_RUN: &str = "/jina.JinaGatewayDryRunRPC/dry_run";
    pub const STATUS: &str = "/jina.JinaInfoRPC/_status";
    pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
    pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
}

/// The endpoint every Jina Executor reports and the dry-run endpoint.
/// `%XX` decoding, as gRPC encodes `grpc-message` and URLs encode path segments; an invalid
/// sequence is kept as written, and bytes that are not UTF-8 are replaced.
pub fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub const DEFAULT_ENDPOINT: &str = "/default";
pub const DRY_RUN_ENDPOINT: &str = "_jina_dry_run_";

#[cfg(test)]
mod percent_tests {
    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(super::percent_decode(b"a%20b"), "a b");
        assert_eq!(super::percent_decode(b"%E2%9C%93 ok"), "✓ ok");
        assert_eq!(super::percent_decode(b"100%"), "100%");
        assert_eq!(super::percent_decode(b"%zz%4"), "%zz%4");
    }
}

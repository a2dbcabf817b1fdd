//! The gRPC metadata (headers) every v2 call carries, and the request
//! signature. Pure functions: no I/O except the clock and a random seed.
//!
//! Facts taken from the Java 5.x client (`rpc/Signature.java`,
//! `rpc/TLSHelper.java`), which every 5.x server accepts:
//! - `x-mq-language`: `JAVA`. Java proxies run `LanguageCode.valueOf(...)` on
//!   it when registering a client (heartbeat, termination), and only know the
//!   4.x `LanguageCode` names; `JAVA` is the one every version accepts (`RUST`
//!   is missing from older proxies), and we speak the Java dialect anyway.
//! - `x-mq-protocol`: `v2`; `x-mq-client-version`: the Java client version we
//!   are wire-compatible with (servers parse it leniently).
//! - `x-mq-date-time`: `yyyyMMdd'T'HHmmss'Z'`. Java formats it in the JVM's
//!   local zone despite the `Z`; servers only use it as the signed string, so
//!   we use UTC, which is what the `Z` claims.
//! - `x-mq-request-id`: a fresh UUID per call.
//! - `x-mq-namespace`: the namespace (Java always sends it, empty if unset;
//!   we send it only when set).
//! - with credentials: `x-mq-session-token` (if any) and
//!   `authorization: MQv2-HMAC-SHA1 Credential=<ak>, SignedHeaders=x-mq-date-time, Signature=<HEX>`
//!   where HEX is the upper-case hex of HMAC-SHA1(secret key, date-time).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

pub const CLIENT_ID: &str = "x-mq-client-id";
pub const LANGUAGE: &str = "x-mq-language";
pub const PROTOCOL: &str = "x-mq-protocol";
pub const CLIENT_VERSION: &str = "x-mq-client-version";
pub const REQUEST_ID: &str = "x-mq-request-id";
pub const DATE_TIME: &str = "x-mq-date-time";
pub const NAMESPACE: &str = "x-mq-namespace";
pub const SESSION_TOKEN: &str = "x-mq-session-token";
pub const AUTHORIZATION: &str = "authorization";

pub const LANGUAGE_VALUE: &str = "JAVA";
pub const PROTOCOL_VALUE: &str = "v2";
/// The Java client release whose wire behaviour we follow.
pub const CLIENT_VERSION_VALUE: &str = "5.0.8";
pub const ALGORITHM: &str = "MQv2-HMAC-SHA1";

/// Credentials for 5.x (ACL 1.0 access key / 2.0 username+password, or
/// ApsaraMQ instance credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct GrpcCredentials {
    pub access_key: String,
    pub secret_key: String,
    pub security_token: Option<String>,
}

impl std::fmt::Debug for GrpcCredentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCredentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `yyyyMMdd'T'HHmmss'Z'` for a time in seconds since the epoch (UTC).
pub fn format_date_time(epoch_secs: i64) -> String {
    let days = epoch_secs.div_euclid(86_400);
    let secs = epoch_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
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

/// Upper-case hex HMAC-SHA1 of `date_time` keyed by `secret_key`.
pub fn signature(secret_key: &str, date_time: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret_key.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(date_time.as_bytes());
    hex::encode_upper(mac.finalize().into_bytes())
}

/// The `authorization` header value.
pub fn authorization(access_key: &str, secret_key: &str, date_time: &str) -> String {
    format!(
        "{ALGORITHM} Credential={access_key}, SignedHeaders={DATE_TIME}, Signature={}",
        signature(secret_key, date_time)
    )
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// SplitMix64: a cheap, well-mixed permutation of a counter.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random 128-bit seed for this process, from std's randomly keyed
/// SipHash and the clock (taken once).
fn process_seed() -> (u64, u64) {
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let word = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(nanos);
            h.write_u64(u64::from(std::process::id()));
            h.write_u64(salt);
            h.finish()
        };
        (word(1), word(2))
    })
}

/// A random (version 4 layout) UUID string: the process's random seed mixed
/// with a process-wide counter, so ids never repeat within a process and
/// differ between processes. One allocation (the string).
pub fn request_id() -> String {
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    let (a, b) = process_seed();
    let hi = (mix64(a ^ n) & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (mix64(b ^ n.rotate_left(32)) & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut pos = 0;
    for (value, digits) in [
        (hi >> 32, 8u32),
        ((hi >> 16) & 0xFFFF, 4),
        (hi & 0xFFFF, 4),
        (lo >> 48, 4),
        (lo & 0xFFFF_FFFF_FFFF, 12),
    ] {
        if pos > 0 {
            out[pos] = b'-';
            pos += 1;
        }
        for i in (0..digits).rev() {
            out[pos] = HEX[((value >> (i * 4)) & 0xF) as usize];
            pos += 1;
        }
    }
    // Only ASCII hex digits and dashes were written.
    String::from_utf8_lossy(&out).into_owned()
}

/// The `x-mq-date-time` of the current second and, with credentials, its
/// `authorization`: computed once per second per session, not per call.
struct DatedValues {
    epoch_secs: i64,
    date_time: AsciiMetadataValue,
    authorization: Option<AsciiMetadataValue>,
}

/// Headers of one client session (producer, or a simple consumer). The
/// values that never change (client id, language, protocol, version,
/// namespace, session token) are validated once, when the session is made;
/// the date-time (and the signature over it) once per second; only the
/// request id is new per call.
#[derive(Clone)]
pub(crate) struct CallHeaders {
    client_id: String,
    credentials: Option<GrpcCredentials>,
    fixed: Arc<MetadataMap>,
    dated: Arc<Mutex<Option<Arc<DatedValues>>>>,
}

impl std::fmt::Debug for CallHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHeaders")
            .field("client_id", &self.client_id)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl CallHeaders {
    pub fn new(client_id: &str, namespace: &str, credentials: Option<GrpcCredentials>) -> Self {
        let mut fixed = MetadataMap::with_capacity(10);
        let mut put = |key: &'static str, value: &str| {
            // Values that are not visible ASCII cannot travel as gRPC
            // metadata; config validation rejects such ids and keys, so a
            // failure here only drops that header.
            if let Ok(v) = AsciiMetadataValue::try_from(value) {
                fixed.insert(key, v);
            }
        };
        put(CLIENT_ID, client_id);
        put(LANGUAGE, LANGUAGE_VALUE);
        put(PROTOCOL, PROTOCOL_VALUE);
        put(CLIENT_VERSION, CLIENT_VERSION_VALUE);
        if !namespace.is_empty() {
            put(NAMESPACE, namespace);
        }
        if let Some(token) = credentials.as_ref().and_then(|c| c.security_token.as_ref()) {
            put(SESSION_TOKEN, token);
        }
        CallHeaders {
            client_id: client_id.to_owned(),
            credentials,
            fixed: Arc::new(fixed),
            dated: Arc::new(Mutex::new(None)),
        }
    }

    /// The metadata of a call made now.
    pub fn metadata(&self) -> MetadataMap {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let dated = {
            let mut slot = self.dated.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(d) if d.epoch_secs == now => Arc::clone(d),
                _ => {
                    let d = Arc::new(self.dated_values(now, &format_date_time(now)));
                    *slot = Some(Arc::clone(&d));
                    d
                }
            }
        };
        let mut map = (*self.fixed).clone();
        map.insert(DATE_TIME, dated.date_time.clone());
        if let Some(a) = &dated.authorization {
            map.insert(AUTHORIZATION, a.clone());
        }
        if let Ok(v) = AsciiMetadataValue::try_from(request_id()) {
            map.insert(REQUEST_ID, v);
        }
        map
    }

    fn dated_values(&self, epoch_secs: i64, date_time: &str) -> DatedValues {
        let authorization = self.credentials.as_ref().and_then(|c| {
            (!c.access_key.trim().is_empty() && !c.secret_key.trim().is_empty())
                .then(|| authorization(&c.access_key, &c.secret_key, date_time))
                .and_then(|a| AsciiMetadataValue::try_from(a).ok())
        });
        DatedValues {
            epoch_secs,
            date_time: AsciiMetadataValue::try_from(date_time)
                .unwrap_or_else(|_| AsciiMetadataValue::from_static("19700101T000000Z")),
            authorization,
        }
    }

    /// Fills `map` for a call made now.
    pub fn apply(&self, map: &mut MetadataMap) {
        for kv in self.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                map.insert(k.clone(), v.clone());
            }
        }
    }

    /// The metadata for a call at `date_time` with `request_id` (tests).
    #[cfg(test)]
    pub fn apply_at(&self, map: &mut MetadataMap, date_time: &str, request_id: &str) {
        for kv in self.fixed.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                map.insert(k.clone(), v.clone());
            }
        }
        let dated = self.dated_values(0, date_time);
        map.insert(DATE_TIME, dated.date_time);
        if let Some(a) = dated.authorization {
            map.insert(AUTHORIZATION, a);
        }
        if let Ok(v) = AsciiMetadataValue::try_from(request_id) {
            map.insert(REQUEST_ID, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_time_format() {
        assert_eq!(format_date_time(0), "19700101T000000Z");
        // 2024-02-29T23:59:58Z
        assert_eq!(format_date_time(1_709_251_198), "20240229T235958Z");
        // 2023-11-14T22:13:20Z
        assert_eq!(format_date_time(1_700_000_000), "20231114T221320Z");
    }

    #[test]
    fn hmac_sha1_signature_is_upper_hex() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?"
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "EFFCDF6AE5EB2FA2D27416D5F184DF9C259A7C79"
        );
        assert_eq!(
            authorization("ak", "Jefe", "what do ya want for nothing?"),
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, \
             Signature=EFFCDF6AE5EB2FA2D27416D5F184DF9C259A7C79"
        );
    }

    #[test]
    fn request_ids_are_uuid_shaped_and_distinct() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn headers_without_and_with_credentials() {
        let h = CallHeaders::new("host@1@0", "", None);
        let mut map = MetadataMap::new();
        h.apply_at(&mut map, "20240101T000000Z", "rid");
        assert_eq!(
            map.get(CLIENT_ID).and_then(|v| v.to_str().ok()),
            Some("host@1@0")
        );
        assert_eq!(
            map.get(LANGUAGE).and_then(|v| v.to_str().ok()),
            Some("JAVA")
        );
        assert_eq!(map.get(PROTOCOL).and_then(|v| v.to_str().ok()), Some("v2"));
        assert!(map.get(NAMESPACE).is_none());
        assert!(map.get(AUTHORIZATION).is_none());

        let h = CallHeaders::new(
            "host@1@0",
            "ns1",
            Some(GrpcCredentials {
                access_key: "ak".into(),
                secret_key: "sk".into(),
                security_token: Some("tok".into()),
            }),
        );
        let mut map = MetadataMap::new();
        h.apply_at(&mut map, "20240101T000000Z", "rid");
        assert_eq!(
            map.get(NAMESPACE).and_then(|v| v.to_str().ok()),
            Some("ns1")
        );
        assert_eq!(
            map.get(SESSION_TOKEN).and_then(|v| v.to_str().ok()),
            Some("tok")
        );
        let auth = map
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(auth, authorization("ak", "sk", "20240101T000000Z"));
        assert!(!format!("{:?}", h.credentials).contains("sk\""));
    }
}

//! [`RemotingCommand`]: one request or response of the Remoting protocol, and
//! its header in both serializations Java knows: JSON (what we send, in the
//! Java dialect) and the binary ROCKETMQ form (accepted on decode).
//!
//! Owns header bytes only; framing lives in `frame.rs`, sockets in
//! `connection.rs`. Decoding is lenient the way Java's fastjson is: unknown
//! fields are ignored, missing ones default, and `extFields` values that are
//! JSON numbers or booleans are turned into their text.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::error::DecodeError;

/// Bit 0 of `flag`: the command is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// Bit 1 of `flag`: the request expects no response.
pub const FLAG_ONEWAY: i32 = 1 << 1;

/// `version` we put in requests: the ordinal of `MQVersion.Version.V4_9_4`
/// in the Java reference (401). Brokers and name servers gate a few
/// behaviours on it (name servers answer standard JSON routes from 4.9.4
/// on); claiming a 4.9.4 client is what a 4.x estate already sees.
pub const CLIENT_VERSION: i32 = 401;

/// Header serialization type, the high byte of the frame's header word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeType {
    Json = 0,
    RocketMq = 1,
}

impl SerializeType {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(SerializeType::Json),
            1 => Some(SerializeType::RocketMq),
            _ => None,
        }
    }
}

/// Java `LanguageCode` names by their binary code.
const LANGUAGES: [&str; 14] = [
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP",
    "OMS", "RUST", "NODE_JS",
];

fn language_code(name: &str) -> u8 {
    LANGUAGES
        .iter()
        .position(|l| *l == name)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(7) // OTHER
}

fn language_name(code: u8) -> String {
    LANGUAGES
        .get(usize::from(code))
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| "OTHER".to_string())
}

/// One Remoting command (request or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: String,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    pub ext_fields: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Default for RemotingCommand {
    fn default() -> Self {
        RemotingCommand {
            code: 0,
            language: "JAVA".to_string(),
            version: 0,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: BTreeMap::new(),
            body: Bytes::new(),
        }
    }
}

impl RemotingCommand {
    /// A request with `code`, language JAVA and [`CLIENT_VERSION`]; the
    /// connection assigns `opaque`.
    pub fn request(code: i32) -> Self {
        RemotingCommand {
            code,
            version: CLIENT_VERSION,
            ..Default::default()
        }
    }

    /// A response to `request` (same opaque) with `code` and `remark`.
    pub fn response_to(request: &RemotingCommand, code: i32, remark: Option<String>) -> Self {
        RemotingCommand {
            code,
            version: CLIENT_VERSION,
            opaque: request.opaque,
            flag: FLAG_RESPONSE,
            remark,
            ..Default::default()
        }
    }

    /// Adds an `extFields` entry (builder style). Values are always text.
    pub fn with_ext(mut self, name: &str, value: impl ToString) -> Self {
        self.ext_fields.insert(name.to_string(), value.to_string());
        self
    }

    /// Adds an `extFields` entry when `value` is `Some`.
    pub fn with_ext_opt<T: ToString>(self, name: &str, value: Option<T>) -> Self {
        match value {
            Some(v) => self.with_ext(name, v),
            None => self,
        }
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    pub fn mark_oneway(&mut self) {
        self.flag |= FLAG_ONEWAY;
    }

    pub fn ext(&self, name: &str) -> Option<&str> {
        self.ext_fields.get(name).map(String::as_str)
    }

    /// An integer `extFields` entry; absent or empty is `None`.
    pub fn ext_i64(&self, name: &str) -> Result<Option<i64>, DecodeError> {
        match self.ext(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => parse_java_long(v)
                .map(Some)
                .ok_or_else(|| DecodeError::BadField {
                    field: name.to_string(),
                    value: v.to_string(),
                    expected: "integer",
                }),
        }
    }

    /// Like [`Self::ext_i64`] but the field must be present.
    pub fn ext_i64_required(&self, name: &'static str) -> Result<i64, DecodeError> {
        self.ext_i64(name)?
            .ok_or(DecodeError::MissingField { field: name })
    }

    pub fn ext_i32(&self, name: &str) -> Result<Option<i32>, DecodeError> {
        match self.ext_i64(name)? {
            None => Ok(None),
            Some(v) => i32::try_from(v)
                .map(Some)
                .map_err(|_| DecodeError::BadField {
                    field: name.to_string(),
                    value: v.to_string(),
                    expected: "32-bit integer",
                }),
        }
    }

    /// A boolean `extFields` entry: `true`/`false` in any case, or `1`/`0`
    /// as the C++ 4.x client sends them.
    pub fn ext_bool(&self, name: &str) -> Result<Option<bool>, DecodeError> {
        match self.ext(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
            Some(v) => Err(DecodeError::BadField {
                field: name.to_string(),
                value: v.to_string(),
                expected: "boolean",
            }),
        }
    }

    /// The JSON header in the Java dialect, with `serializeTypeCurrentRPC`.
    pub fn encode_json_header(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct JsonHeader<'a> {
            code: i32,
            language: &'a str,
            version: i32,
            opaque: i32,
            flag: i32,
            #[serde(skip_serializing_if = "Option::is_none")]
            remark: Option<&'a str>,
            #[serde(rename = "extFields")]
            ext_fields: &'a BTreeMap<String, String>,
            #[serde(rename = "serializeTypeCurrentRPC")]
            serialize_type: &'static str,
        }
        let header = JsonHeader {
            code: self.code,
            language: &self.language,
            version: self.version,
            opaque: self.opaque,
            flag: self.flag,
            remark: self.remark.as_deref(),
            ext_fields: &self.ext_fields,
            serialize_type: "JSON",
        };
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(&header).unwrap_or_default()
    }

    /// The binary ROCKETMQ header (`RocketMQSerializable`).
    pub fn encode_binary_header(&self) -> Result<Vec<u8>, String> {
        let code =
            i16::try_from(self.code).map_err(|_| format!("code {} exceeds i16", self.code))?;
        let version = i16::try_from(self.version)
            .map_err(|_| format!("version {} exceeds i16", self.version))?;
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&code.to_be_bytes());
        out.push(language_code(&self.language));
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(&self.flag.to_be_bytes());
        let remark = self.remark.as_deref().unwrap_or("").as_bytes();
        out.extend_from_slice(&len_i32(remark.len())?.to_be_bytes());
        out.extend_from_slice(remark);
        let mut ext = Vec::new();
        for (k, v) in &self.ext_fields {
            let klen =
                i16::try_from(k.len()).map_err(|_| format!("extFields key `{k}` too long"))?;
            ext.extend_from_slice(&klen.to_be_bytes());
            ext.extend_from_slice(k.as_bytes());
            ext.extend_from_slice(&len_i32(v.len())?.to_be_bytes());
            ext.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&len_i32(ext.len())?.to_be_bytes());
        out.extend_from_slice(&ext);
        Ok(out)
    }

    /// Decodes a header of the given serialization type; `body` stays empty.
    pub fn decode_header(kind: SerializeType, bytes: &[u8]) -> Result<Self, DecodeError> {
        match kind {
            SerializeType::Json => decode_json_header(bytes),
            SerializeType::RocketMq => decode_binary_header(bytes),
        }
    }
}

fn len_i32(len: usize) -> Result<i32, String> {
    i32::try_from(len).map_err(|_| format!("length {len} exceeds i32"))
}

/// Java's `Long.parseLong`, plus a leading `+` and surrounding spaces.
fn parse_java_long(v: &str) -> Option<i64> {
    v.trim().parse::<i64>().ok()
}

fn json_int(value: &Value, field: &str) -> Result<i32, DecodeError> {
    let bad = || DecodeError::BadField {
        field: field.to_string(),
        value: value.to_string(),
        expected: "32-bit integer",
    };
    match value {
        Value::Null => Ok(0),
        Value::Number(n) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(bad),
        Value::String(s) => parse_java_long(s)
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Text of a JSON scalar the way fastjson would coerce it into a `String`.
fn json_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn decode_json_header(bytes: &[u8]) -> Result<RemotingCommand, DecodeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson {
        what: "command header",
        reason: e.to_string(),
    })?;
    let Value::Object(map) = value else {
        return Err(DecodeError::InvalidJson {
            what: "command header",
            reason: "not a JSON object".to_string(),
        });
    };
    let mut cmd = RemotingCommand::default();
    for (key, value) in &map {
        match key.as_str() {
            "code" => cmd.code = json_int(value, "code")?,
            "version" => cmd.version = json_int(value, "version")?,
            "opaque" => cmd.opaque = json_int(value, "opaque")?,
            "flag" => cmd.flag = json_int(value, "flag")?,
            "language" => {
                cmd.language = match value {
                    Value::Number(n) => {
                        language_name(n.as_u64().and_then(|v| u8::try_from(v).ok()).unwrap_or(7))
                    }
                    other => json_text(other).unwrap_or_else(|| "JAVA".to_string()),
                }
            }
            "remark" => cmd.remark = json_text(value),
            "extFields" => match value {
                Value::Null => {}
                Value::Object(fields) => {
                    for (k, v) in fields {
                        if let Some(text) = json_text(v) {
                            cmd.ext_fields.insert(k.clone(), text);
                        }
                    }
                }
                _ => {
                    return Err(DecodeError::BadField {
                        field: "extFields".to_string(),
                        value: value.to_string(),
                        expected: "JSON object",
                    })
                }
            },
            _ => {} // serializeTypeCurrentRPC, suspended, unknown: ignored like fastjson
        }
    }
    Ok(cmd)
}

/// Bounds-checked big-endian reader over a header slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.buf.len().saturating_sub(self.pos);
        if n > available {
            return Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn string(&mut self, len: i64, what: &'static str) -> Result<Option<String>, DecodeError> {
        if len == 0 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| DecodeError::BadLength {
            what,
            offset: self.pos,
            value: len,
        })?;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes)
            .map(|s| Some(s.to_string()))
            .map_err(|_| DecodeError::InvalidUtf8 { what })
    }
}

fn decode_binary_header(bytes: &[u8]) -> Result<RemotingCommand, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let code = i32::from(r.i16("header code")?);
    let language = language_name(r.u8("header language")?);
    let version = i32::from(r.i16("header version")?);
    let opaque = r.i32("header opaque")?;
    let flag = r.i32("header flag")?;
    let remark_len = r.i32("header remark length")?;
    let remark = r.string(i64::from(remark_len), "header remark")?;
    let ext_len = r.i32("header extFields length")?;
    let mut ext_fields = BTreeMap::new();
    if ext_len > 0 {
        let ext_bytes = r.take(
            usize::try_from(ext_len).unwrap_or(usize::MAX),
            "header extFields",
        )?;
        let mut e = Reader {
            buf: ext_bytes,
            pos: 0,
        };
        while e.pos < ext_bytes.len() {
            let klen = e.i16("extFields key length")?;
            let key = e.string(i64::from(klen), "extFields key")?;
            let vlen = e.i32("extFields value length")?;
            let value = e.string(i64::from(vlen), "extFields value")?;
            if let (Some(k), Some(v)) = (key, value) {
                ext_fields.insert(k, v);
            }
        }
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_header_is_java_dialect() {
        let cmd = RemotingCommand::request(11)
            .with_ext("topic", "t")
            .with_ext("queueId", 3)
            .with_ext("unitMode", false);
        let json = String::from_utf8(cmd.encode_json_header()).unwrap();
        assert_eq!(
            json,
            r#"{"code":11,"language":"JAVA","version":401,"opaque":0,"flag":0,"extFields":{"queueId":"3","topic":"t","unitMode":"false"},"serializeTypeCurrentRPC":"JSON"}"#
        );
        let back = RemotingCommand::decode_header(SerializeType::Json, json.as_bytes()).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn json_decode_is_lenient() {
        let raw = br#"{"code":"17","flag":1,"extFields":{"queueOffset":42,"unitMode":true,"nil":null,"n":1.5,"s":"x"},"unknown":[1,2],"opaque":-3}"#;
        let cmd = RemotingCommand::decode_header(SerializeType::Json, raw).unwrap();
        assert_eq!(cmd.code, 17);
        assert_eq!(cmd.opaque, -3);
        assert!(cmd.is_response());
        assert_eq!(cmd.language, "JAVA");
        assert_eq!(cmd.remark, None);
        assert_eq!(cmd.ext_i64("queueOffset").unwrap(), Some(42));
        assert_eq!(cmd.ext_bool("unitMode").unwrap(), Some(true));
        assert_eq!(cmd.ext("nil"), None);
        assert_eq!(cmd.ext("n"), Some("1.5"));
        assert_eq!(cmd.ext("s"), Some("x"));
    }

    #[test]
    fn booleans_as_zero_and_one() {
        let cmd = RemotingCommand::request(1)
            .with_ext("a", "1")
            .with_ext("b", "0")
            .with_ext("c", "TRUE")
            .with_ext("d", "maybe");
        assert_eq!(cmd.ext_bool("a").unwrap(), Some(true));
        assert_eq!(cmd.ext_bool("b").unwrap(), Some(false));
        assert_eq!(cmd.ext_bool("c").unwrap(), Some(true));
        assert!(cmd.ext_bool("d").is_err());
        assert_eq!(cmd.ext_bool("missing").unwrap(), None);
    }

    #[test]
    fn json_missing_fields_default() {
        let cmd = RemotingCommand::decode_header(SerializeType::Json, b"{}").unwrap();
        assert_eq!(cmd.code, 0);
        assert!(cmd.ext_fields.is_empty());
        assert!(RemotingCommand::decode_header(SerializeType::Json, b"[1]").is_err());
        assert!(RemotingCommand::decode_header(SerializeType::Json, b"{\"code\":").is_err());
        assert!(RemotingCommand::decode_header(SerializeType::Json, br#"{"code":1e40}"#).is_err());
    }

    #[test]
    fn binary_header_roundtrip_and_java_layout() {
        let mut cmd = RemotingCommand::request(105).with_ext("topic", "T");
        cmd.opaque = 7;
        cmd.remark = Some("ok".into());
        cmd.language = "RUST".into();
        let bytes = cmd.encode_binary_header().unwrap();
        let mut expected = vec![
            0, 105, 12, 1, 145, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 2, b'o', b'k',
        ];
        expected.extend_from_slice(&[0, 0, 0, 12, 0, 5]);
        expected.extend_from_slice(b"topic");
        expected.extend_from_slice(&[0, 0, 0, 1, b'T']);
        assert_eq!(bytes, expected);
        let back = RemotingCommand::decode_header(SerializeType::RocketMq, &bytes).unwrap();
        assert_eq!(back, cmd);
        for cut in 0..bytes.len() {
            assert!(
                RemotingCommand::decode_header(SerializeType::RocketMq, &bytes[..cut]).is_err()
            );
        }
    }
}

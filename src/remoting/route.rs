//! Topic route data (`GET_ROUTEINFO_BY_TOPIC` answer body) and helpers to
//! pick brokers and queues from it.
//!
//! Parsed leniently: Java name servers before 4.9.4 answer with fastjson
//! output whose integer map keys are unquoted (`{"brokerAddrs":{0:"..."}}`),
//! which is not JSON; [`quote_integer_keys`] repairs that before serde_json.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::error::DecodeError;

/// Queue permission bits (`PermName`).
pub mod perm {
    pub const INHERIT: i32 = 1;
    pub const WRITE: i32 = 1 << 1;
    pub const READ: i32 = 1 << 2;
}

/// Broker id of a master in `brokerAddrs`.
pub const MASTER_ID: i64 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueData {
    pub broker_name: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
    pub topic_sys_flag: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    pub broker_addrs: BTreeMap<i64, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicRoute {
    pub queue_datas: Vec<QueueData>,
    pub broker_datas: Vec<BrokerData>,
    pub order_topic_conf: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoute {
    #[serde(default)]
    order_topic_conf: Option<String>,
    #[serde(default)]
    queue_datas: Option<Vec<RawQueueData>>,
    #[serde(default)]
    broker_datas: Option<Vec<RawBrokerData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawQueueData {
    #[serde(default)]
    broker_name: Option<String>,
    #[serde(default)]
    read_queue_nums: Option<i32>,
    #[serde(default)]
    write_queue_nums: Option<i32>,
    #[serde(default)]
    perm: Option<i32>,
    #[serde(default)]
    topic_sys_flag: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBrokerData {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    broker_name: Option<String>,
    #[serde(default)]
    broker_addrs: Option<BTreeMap<String, Option<String>>>,
}

impl TopicRoute {
    /// Parses a route body, standard JSON or fastjson with bare integer keys.
    pub fn parse(body: &[u8]) -> Result<TopicRoute, DecodeError> {
        let text = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8 {
            what: "topic route",
        })?;
        let fixed = quote_integer_keys(text);
        let raw: RawRoute = serde_json::from_str(&fixed).map_err(|e| DecodeError::InvalidJson {
            what: "topic route",
            reason: e.to_string(),
        })?;
        let queue_datas = raw
            .queue_datas
            .unwrap_or_default()
            .into_iter()
            .map(|q| QueueData {
                broker_name: q.broker_name.unwrap_or_default(),
                read_queue_nums: q.read_queue_nums.unwrap_or(0),
                write_queue_nums: q.write_queue_nums.unwrap_or(0),
                perm: q.perm.unwrap_or(0),
                topic_sys_flag: q.topic_sys_flag.unwrap_or(0),
            })
            .collect();
        let mut broker_datas = Vec::new();
        for b in raw.broker_datas.unwrap_or_default() {
            let mut broker_addrs = BTreeMap::new();
            for (id, addr) in b.broker_addrs.unwrap_or_default() {
                let id_num = id
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| DecodeError::BadField {
                        field: "brokerAddrs".to_string(),
                        value: id.clone(),
                        expected: "broker id (integer)",
                    })?;
                if let Some(addr) = addr {
                    broker_addrs.insert(id_num, addr);
                }
            }
            broker_datas.push(BrokerData {
                cluster: b.cluster.unwrap_or_default(),
                broker_name: b.broker_name.unwrap_or_default(),
                broker_addrs,
            });
        }
        Ok(TopicRoute {
            queue_datas,
            broker_datas,
            order_topic_conf: raw.order_topic_conf.filter(|s| !s.is_empty()),
        })
    }

    pub fn broker(&self, broker_name: &str) -> Option<&BrokerData> {
        self.broker_datas
            .iter()
            .find(|b| b.broker_name == broker_name)
    }

    /// Address of the master (broker id 0) of `broker_name`.
    pub fn master_addr(&self, broker_name: &str) -> Option<&str> {
        self.broker(broker_name)?
            .broker_addrs
            .get(&MASTER_ID)
            .map(String::as_str)
    }

    /// Addresses of `broker_name`: master first, then slaves by id.
    pub fn addrs_master_first(&self, broker_name: &str) -> Vec<&str> {
        let Some(b) = self.broker(broker_name) else {
            return Vec::new();
        };
        let mut out: Vec<&str> = b
            .broker_addrs
            .get(&MASTER_ID)
            .map(String::as_str)
            .into_iter()
            .collect();
        out.extend(
            b.broker_addrs
                .iter()
                .filter(|(id, _)| **id > MASTER_ID)
                .map(|(_, a)| a.as_str()),
        );
        out
    }

    /// Every readable queue as (broker name, queue id), sorted.
    pub fn readable_queues(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = self
            .queue_datas
            .iter()
            .filter(|q| q.perm & perm::READ != 0)
            .flat_map(|q| (0..q.read_queue_nums.max(0)).map(|id| (q.broker_name.clone(), id)))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Quotes bare integer object keys (`{0:"a", -1:"b"}` -> `{"0":"a", "-1":"b"}`)
/// outside string literals; valid JSON passes through unchanged.
pub fn quote_integer_keys(input: &str) -> std::borrow::Cow<'_, str> {
    let bytes = input.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `input` already copied into `out`
    let mut in_string = false;
    let mut escaped = false;
    let mut expect_key = false; // just after `{` or `,` (outside strings)
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                expect_key = false;
                i += 1;
            }
            b'{' | b',' => {
                expect_key = true;
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'-' | b'0'..=b'9' if expect_key => {
                let start = i;
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                let mut k = j;
                while k < bytes.len() && matches!(bytes[k], b' ' | b'\t' | b'\r' | b'\n') {
                    k += 1;
                }
                let is_key =
                    bytes.get(k) == Some(&b':') && bytes[start..j].iter().any(u8::is_ascii_digit);
                if is_key {
                    let o = out.get_or_insert_with(|| String::with_capacity(input.len() + 16));
                    o.push_str(&input[copied..start]);
                    o.push('"');
                    o.push_str(&input[start..j]);
                    o.push('"');
                    copied = j;
                }
                expect_key = false;
                i = j;
            }
            _ => {
                expect_key = false;
                i += 1;
            }
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(input),
        Some(mut o) => {
            o.push_str(&input[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FASTJSON: &str = r#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false},{"brokerAddrs":{1:"10.0.0.2:10911"},"brokerName":"broker-b","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4},{"brokerName":"broker-b","perm":2,"readQueueNums":2,"topicSysFlag":0,"writeQueueNums":2}],"topicQueueMappingByBroker":{"broker-a":{"currIdMap":{-1:0, 3 :2}}}}"#;

    #[test]
    fn parses_fastjson_with_bare_integer_keys() {
        let r = TopicRoute::parse(FASTJSON.as_bytes()).unwrap();
        assert_eq!(r.broker_datas.len(), 2);
        assert_eq!(r.master_addr("broker-a"), Some("127.0.0.1:10911"));
        assert_eq!(
            r.addrs_master_first("broker-a"),
            vec!["127.0.0.1:10911", "127.0.0.1:10921"]
        );
        assert_eq!(r.master_addr("broker-b"), None);
        assert_eq!(r.addrs_master_first("broker-b"), vec!["10.0.0.2:10911"]);
        assert_eq!(
            r.readable_queues(),
            (0..4)
                .map(|i| ("broker-a".to_string(), i))
                .collect::<Vec<_>>()
        );
        assert_eq!(r.order_topic_conf, None);
    }

    #[test]
    fn standard_json_and_missing_fields() {
        let r = TopicRoute::parse(
            br#"{"orderTopicConf":"broker-a:4","queueDatas":[{"brokerName":"a","perm":4,"readQueueNums":1}],"brokerDatas":[{"brokerName":"a","brokerAddrs":{"0":"h:1"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.master_addr("a"), Some("h:1"));
        assert_eq!(r.readable_queues(), vec![("a".to_string(), 0)]);
        assert_eq!(r.order_topic_conf.as_deref(), Some("broker-a:4"));
        assert!(TopicRoute::parse(b"{}").unwrap().broker_datas.is_empty());
        assert!(TopicRoute::parse(b"not json").is_err());
    }

    #[test]
    fn fixup_leaves_strings_and_values_alone() {
        let s = r#"{"a":"{0:1}","b":[1,2],"c":{"x":-5},"d":"\"{7:"}"#;
        assert_eq!(quote_integer_keys(s), s);
        assert_eq!(
            quote_integer_keys("{ 12 : 3 ,-4:5}"),
            r#"{ "12" : 3 ,"-4":5}"#
        );
        assert_eq!(
            quote_integer_keys("[1,2,{3:[4,5]}]"),
            r#"[1,2,{"3":[4,5]}]"#
        );
    }
}

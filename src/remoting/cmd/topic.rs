//! UPDATE_AND_CREATE_TOPIC on a broker, with topic attributes in Java's
//! `AttributeParser` form (`+message.type=FIFO,+other=x`).

use std::collections::BTreeMap;

use crate::remoting::codes::request;
use crate::remoting::error::Result;
use crate::remoting::header::RemotingCommand;
use crate::remoting::route::perm;
use crate::remoting::RemotingClient;

use super::send::DEFAULT_TOPIC;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub name: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    /// 6 = read + write.
    pub perm: i32,
    /// `SINGLE_TAG` (or `MULTI_TAG`).
    pub topic_filter_type: String,
    pub topic_sys_flag: i32,
    pub order: bool,
    /// Attribute name -> value, e.g. `message.type` -> `FIFO`. A name may
    /// carry its own `+`/`-` prefix; otherwise `+` (add) is used.
    pub attributes: BTreeMap<String, String>,
}

impl TopicConfig {
    pub fn new(name: &str, queues: i32) -> Self {
        TopicConfig {
            name: name.to_string(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm: perm::READ | perm::WRITE,
            topic_filter_type: "SINGLE_TAG".to_string(),
            topic_sys_flag: 0,
            order: false,
            attributes: BTreeMap::new(),
        }
    }

    /// Java's `AttributeParser.parseToString` of the attributes, with `+`
    /// added to names that have no `+`/`-` prefix.
    pub fn attributes_string(&self) -> String {
        self.attributes
            .iter()
            .map(|(k, v)| {
                let key = if k.starts_with('+') || k.starts_with('-') {
                    k.clone()
                } else {
                    format!("+{k}")
                };
                if v.is_empty() {
                    key
                } else {
                    format!("{key}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn to_command(&self) -> RemotingCommand {
        let attributes = (!self.attributes.is_empty()).then(|| self.attributes_string());
        RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
            .with_ext("topic", &self.name)
            .with_ext("defaultTopic", DEFAULT_TOPIC)
            .with_ext("readQueueNums", self.read_queue_nums)
            .with_ext("writeQueueNums", self.write_queue_nums)
            .with_ext("perm", self.perm)
            .with_ext("topicFilterType", &self.topic_filter_type)
            .with_ext("topicSysFlag", self.topic_sys_flag)
            .with_ext("order", self.order)
            .with_ext_opt("attributes", attributes)
    }
}

impl RemotingClient {
    /// Creates or updates a topic on one broker.
    pub async fn create_topic(&self, broker: &str, config: &TopicConfig) -> Result<()> {
        let resp = self
            .invoke(broker, config.to_command(), self.request_timeout())
            .await?;
        super::expect_success(broker, resp).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_java_header() {
        let mut t = TopicConfig::new("fifo-topic", 8);
        t.attributes.insert("message.type".into(), "FIFO".into());
        let cmd = t.to_command();
        assert_eq!(cmd.code, 17);
        assert_eq!(cmd.ext("attributes"), Some("+message.type=FIFO"));
        assert_eq!(cmd.ext("perm"), Some("6"));
        assert_eq!(cmd.ext("order"), Some("false"));
        assert_eq!(cmd.ext("topicFilterType"), Some("SINGLE_TAG"));
        t.attributes.insert("-old".into(), String::new());
        assert_eq!(t.attributes_string(), "-old,+message.type=FIFO");
        assert_eq!(
            TopicConfig::new("x", 1).to_command().ext("attributes"),
            None
        );
    }
}

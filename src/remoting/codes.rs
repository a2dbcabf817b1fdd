//! Request and response codes of the RocketMQ Remoting protocol, as defined by
//! the Java reference (`RequestCode`, `ResponseCode`, `RemotingSysResponseCode`).
//!
//! Owns numbers and their names only; no I/O, no parsing.

/// Request codes (`org.apache.rocketmq.remoting.protocol.RequestCode`).
pub mod request {
    pub const SEND_MESSAGE: i32 = 10;
    pub const UPDATE_AND_CREATE_SUBSCRIPTIONGROUP: i32 = 200;
    pub const PULL_MESSAGE: i32 = 11;
    pub const QUERY_MESSAGE: i32 = 12;
    pub const QUERY_CONSUMER_OFFSET: i32 = 14;
    pub const UPDATE_CONSUMER_OFFSET: i32 = 15;
    pub const UPDATE_AND_CREATE_TOPIC: i32 = 17;
    pub const GET_ALL_TOPIC_CONFIG: i32 = 21;
    pub const GET_BROKER_RUNTIME_INFO: i32 = 28;
    pub const SEARCH_OFFSET_BY_TIMESTAMP: i32 = 29;
    pub const GET_MAX_OFFSET: i32 = 30;
    pub const GET_MIN_OFFSET: i32 = 31;
    pub const GET_EARLIEST_MSG_STORETIME: i32 = 32;
    pub const VIEW_MESSAGE_BY_ID: i32 = 33;
    pub const HEART_BEAT: i32 = 34;
    pub const UNREGISTER_CLIENT: i32 = 35;
    pub const CONSUMER_SEND_MSG_BACK: i32 = 36;
    pub const END_TRANSACTION: i32 = 37;
    pub const GET_CONSUMER_LIST_BY_GROUP: i32 = 38;
    pub const CHECK_TRANSACTION_STATE: i32 = 39;
    pub const NOTIFY_CONSUMER_IDS_CHANGED: i32 = 40;
    pub const LOCK_BATCH_MQ: i32 = 41;
    pub const UNLOCK_BATCH_MQ: i32 = 42;
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
    pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
    pub const GET_TOPIC_STATS_INFO: i32 = 202;
    pub const RESET_CONSUMER_CLIENT_OFFSET: i32 = 220;
    pub const GET_CONSUMER_STATUS_FROM_CLIENT: i32 = 221;
    pub const GET_CONSUMER_RUNNING_INFO: i32 = 307;
    pub const CONSUME_MESSAGE_DIRECTLY: i32 = 309;
    pub const SEND_MESSAGE_V2: i32 = 310;
    pub const SEND_BATCH_MESSAGE: i32 = 320;
    pub const PUSH_REPLY_MESSAGE_TO_CLIENT: i32 = 326;
    pub const GET_TOPIC_CONFIG: i32 = 351;
    pub const NOTIFY_MIN_BROKER_ID_CHANGE: i32 = 905;
}

/// Response codes (`RemotingSysResponseCode` and `ResponseCode`).
pub mod response {
    pub const SUCCESS: i32 = 0;
    pub const SYSTEM_ERROR: i32 = 1;
    pub const SYSTEM_BUSY: i32 = 2;
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    pub const TRANSACTION_FAILED: i32 = 4;
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    pub const MESSAGE_ILLEGAL: i32 = 13;
    pub const SERVICE_NOT_AVAILABLE: i32 = 14;
    pub const VERSION_NOT_SUPPORTED: i32 = 15;
    pub const NO_PERMISSION: i32 = 16;
    pub const TOPIC_NOT_EXIST: i32 = 17;
    pub const TOPIC_EXIST_ALREADY: i32 = 18;
    pub const PULL_NOT_FOUND: i32 = 19;
    pub const PULL_RETRY_IMMEDIATELY: i32 = 20;
    pub const PULL_OFFSET_MOVED: i32 = 21;
    pub const QUERY_NOT_FOUND: i32 = 22;
    pub const SUBSCRIPTION_PARSE_FAILED: i32 = 23;
    pub const SUBSCRIPTION_NOT_EXIST: i32 = 24;
    pub const SUBSCRIPTION_NOT_LATEST: i32 = 25;
    pub const SUBSCRIPTION_GROUP_NOT_EXIST: i32 = 26;
    pub const FILTER_DATA_NOT_EXIST: i32 = 27;
    pub const FILTER_DATA_NOT_LATEST: i32 = 28;
    pub const INVALID_PARAMETER: i32 = 29;
    pub const TRANSACTION_SHOULD_COMMIT: i32 = 200;
    pub const TRANSACTION_SHOULD_ROLLBACK: i32 = 201;
    pub const TRANSACTION_STATE_UNKNOW: i32 = 202;
    pub const TRANSACTION_STATE_GROUP_WRONG: i32 = 203;
    pub const NO_BUYER_ID: i32 = 204;
    pub const NOT_IN_CURRENT_UNIT: i32 = 205;
    pub const CONSUMER_NOT_ONLINE: i32 = 206;
    pub const CONSUME_MSG_TIMEOUT: i32 = 207;
    pub const NO_MESSAGE: i32 = 208;
    pub const POLLING_FULL: i32 = 209;
    pub const POLLING_TIMEOUT: i32 = 210;
    pub const BROKER_NOT_EXIST: i32 = 211;
    pub const FLOW_CONTROL: i32 = 215;
    pub const NOT_LEADER_FOR_QUEUE: i32 = 501;
    pub const ILLEGAL_OPERATION: i32 = 604;
    pub const GO_AWAY: i32 = 1500;
}

/// Java constant name of a response code, for logs and error messages.
pub fn response_name(code: i32) -> &'static str {
    use response::*;
    match code {
        SUCCESS => "SUCCESS",
        SYSTEM_ERROR => "SYSTEM_ERROR",
        SYSTEM_BUSY => "SYSTEM_BUSY",
        REQUEST_CODE_NOT_SUPPORTED => "REQUEST_CODE_NOT_SUPPORTED",
        TRANSACTION_FAILED => "TRANSACTION_FAILED",
        FLUSH_DISK_TIMEOUT => "FLUSH_DISK_TIMEOUT",
        SLAVE_NOT_AVAILABLE => "SLAVE_NOT_AVAILABLE",
        FLUSH_SLAVE_TIMEOUT => "FLUSH_SLAVE_TIMEOUT",
        MESSAGE_ILLEGAL => "MESSAGE_ILLEGAL",
        SERVICE_NOT_AVAILABLE => "SERVICE_NOT_AVAILABLE",
        VERSION_NOT_SUPPORTED => "VERSION_NOT_SUPPORTED",
        NO_PERMISSION => "NO_PERMISSION",
        TOPIC_NOT_EXIST => "TOPIC_NOT_EXIST",
        TOPIC_EXIST_ALREADY => "TOPIC_EXIST_ALREADY",
        PULL_NOT_FOUND => "PULL_NOT_FOUND",
        PULL_RETRY_IMMEDIATELY => "PULL_RETRY_IMMEDIATELY",
        PULL_OFFSET_MOVED => "PULL_OFFSET_MOVED",
        QUERY_NOT_FOUND => "QUERY_NOT_FOUND",
        SUBSCRIPTION_PARSE_FAILED => "SUBSCRIPTION_PARSE_FAILED",
        SUBSCRIPTION_NOT_EXIST => "SUBSCRIPTION_NOT_EXIST",
        SUBSCRIPTION_NOT_LATEST => "SUBSCRIPTION_NOT_LATEST",
        SUBSCRIPTION_GROUP_NOT_EXIST => "SUBSCRIPTION_GROUP_NOT_EXIST",
        FILTER_DATA_NOT_EXIST => "FILTER_DATA_NOT_EXIST",
        FILTER_DATA_NOT_LATEST => "FILTER_DATA_NOT_LATEST",
        INVALID_PARAMETER => "INVALID_PARAMETER",
        TRANSACTION_SHOULD_COMMIT => "TRANSACTION_SHOULD_COMMIT",
        TRANSACTION_SHOULD_ROLLBACK => "TRANSACTION_SHOULD_ROLLBACK",
        TRANSACTION_STATE_UNKNOW => "TRANSACTION_STATE_UNKNOW",
        TRANSACTION_STATE_GROUP_WRONG => "TRANSACTION_STATE_GROUP_WRONG",
        NO_BUYER_ID => "NO_BUYER_ID",
        NOT_IN_CURRENT_UNIT => "NOT_IN_CURRENT_UNIT",
        CONSUMER_NOT_ONLINE => "CONSUMER_NOT_ONLINE",
        CONSUME_MSG_TIMEOUT => "CONSUME_MSG_TIMEOUT",
        NO_MESSAGE => "NO_MESSAGE",
        POLLING_FULL => "POLLING_FULL",
        POLLING_TIMEOUT => "POLLING_TIMEOUT",
        BROKER_NOT_EXIST => "BROKER_NOT_EXIST",
        FLOW_CONTROL => "FLOW_CONTROL",
        NOT_LEADER_FOR_QUEUE => "NOT_LEADER_FOR_QUEUE",
        ILLEGAL_OPERATION => "ILLEGAL_OPERATION",
        GO_AWAY => "GO_AWAY",
        _ => "UNKNOWN",
    }
}

/// Java constant name of a request code, for logs and error messages.
pub fn request_name(code: i32) -> &'static str {
    use request::*;
    match code {
        SEND_MESSAGE => "SEND_MESSAGE",
        PULL_MESSAGE => "PULL_MESSAGE",
        QUERY_MESSAGE => "QUERY_MESSAGE",
        QUERY_CONSUMER_OFFSET => "QUERY_CONSUMER_OFFSET",
        UPDATE_CONSUMER_OFFSET => "UPDATE_CONSUMER_OFFSET",
        UPDATE_AND_CREATE_TOPIC => "UPDATE_AND_CREATE_TOPIC",
        GET_ALL_TOPIC_CONFIG => "GET_ALL_TOPIC_CONFIG",
        GET_BROKER_RUNTIME_INFO => "GET_BROKER_RUNTIME_INFO",
        SEARCH_OFFSET_BY_TIMESTAMP => "SEARCH_OFFSET_BY_TIMESTAMP",
        GET_MAX_OFFSET => "GET_MAX_OFFSET",
        GET_MIN_OFFSET => "GET_MIN_OFFSET",
        GET_EARLIEST_MSG_STORETIME => "GET_EARLIEST_MSG_STORETIME",
        VIEW_MESSAGE_BY_ID => "VIEW_MESSAGE_BY_ID",
        HEART_BEAT => "HEART_BEAT",
        UNREGISTER_CLIENT => "UNREGISTER_CLIENT",
        CONSUMER_SEND_MSG_BACK => "CONSUMER_SEND_MSG_BACK",
        END_TRANSACTION => "END_TRANSACTION",
        GET_CONSUMER_LIST_BY_GROUP => "GET_CONSUMER_LIST_BY_GROUP",
        CHECK_TRANSACTION_STATE => "CHECK_TRANSACTION_STATE",
        NOTIFY_CONSUMER_IDS_CHANGED => "NOTIFY_CONSUMER_IDS_CHANGED",
        LOCK_BATCH_MQ => "LOCK_BATCH_MQ",
        UNLOCK_BATCH_MQ => "UNLOCK_BATCH_MQ",
        GET_ROUTEINFO_BY_TOPIC => "GET_ROUTEINFO_BY_TOPIC",
        GET_BROKER_CLUSTER_INFO => "GET_BROKER_CLUSTER_INFO",
        GET_TOPIC_STATS_INFO => "GET_TOPIC_STATS_INFO",
        RESET_CONSUMER_CLIENT_OFFSET => "RESET_CONSUMER_CLIENT_OFFSET",
        GET_CONSUMER_STATUS_FROM_CLIENT => "GET_CONSUMER_STATUS_FROM_CLIENT",
        GET_CONSUMER_RUNNING_INFO => "GET_CONSUMER_RUNNING_INFO",
        CONSUME_MESSAGE_DIRECTLY => "CONSUME_MESSAGE_DIRECTLY",
        SEND_MESSAGE_V2 => "SEND_MESSAGE_V2",
        SEND_BATCH_MESSAGE => "SEND_BATCH_MESSAGE",
        PUSH_REPLY_MESSAGE_TO_CLIENT => "PUSH_REPLY_MESSAGE_TO_CLIENT",
        GET_TOPIC_CONFIG => "GET_TOPIC_CONFIG",
        NOTIFY_MIN_BROKER_ID_CHANGE => "NOTIFY_MIN_BROKER_ID_CHANGE",
        _ => "UNKNOWN",
    }
}

/// What an operator can do about a broker answer, for error messages.
pub fn response_remedy(code: i32) -> &'static str {
    use response::*;
    match code {
        TOPIC_NOT_EXIST => "create the topic on the cluster or fix its name in the config",
        NO_PERMISSION => {
            "check the ACL access key and that the account may use this topic and group"
        }
        SUBSCRIPTION_GROUP_NOT_EXIST => {
            "create the consumer group on the broker or enable autoCreateSubscriptionGroup"
        }
        SUBSCRIPTION_PARSE_FAILED => "fix the tag expression of the route",
        SYSTEM_BUSY | FLOW_CONTROL | POLLING_FULL => "the broker is overloaded; retried later",
        SERVICE_NOT_AVAILABLE => "the broker is not writable (slave, shutting down or disk full)",
        MESSAGE_ILLEGAL => "the message breaks a broker limit (size, topic name or properties)",
        VERSION_NOT_SUPPORTED | REQUEST_CODE_NOT_SUPPORTED => {
            "this broker version does not support the request"
        }
        _ => "see the broker log for details",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_java_constants() {
        assert_eq!(
            request_name(request::GET_ROUTEINFO_BY_TOPIC),
            "GET_ROUTEINFO_BY_TOPIC"
        );
        assert_eq!(
            response_name(response::PULL_OFFSET_MOVED),
            "PULL_OFFSET_MOVED"
        );
        assert_eq!(response_name(12345), "UNKNOWN");
    }
}

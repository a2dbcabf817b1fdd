//! Errors of the 5.x publishing layer, split into *permanent* rejections
//! (this message can never be accepted by this topic: quarantine it) and
//! everything else (retry later; alert if it persists).
//!
//! Decisions worth knowing:
//! - `TOPIC_NOT_FOUND` / `NOT_FOUND` is **not** permanent: a missing target
//!   topic is an operator's setup step that is usually about to happen, and
//!   quarantining every message of a route because of it would be far worse
//!   than waiting. The Display says how to create it.
//! - Authentication / permission failures are not permanent either: they
//!   concern credentials, not the message.
//! - `ILLEGAL_TOPIC` is a route problem (the configured name is invalid on
//!   5.x), not a message problem: the route stalls, nothing is quarantined.
//! - `BAD_REQUEST` and codes this build does not know are retried: they do
//!   not name the message (the rocketmq-rust proxy answers BAD_REQUEST for
//!   every send while its broker is down). The pipeline's poison rule
//!   quarantines a message only when it keeps being refused while its
//!   neighbours to the same topic are accepted.
//! - An answer that does not positively acknowledge the message (no
//!   status, CODE_UNSPECIFIED, another message's id, a wrong number of
//!   entries) is retried and `Suspect`, never taken as accepted (the Java
//!   client reads a missing status as CODE_UNSPECIFIED, a failure).
//! - A gRPC status that refuses the request itself (RESOURCE_EXHAUSTED for
//!   a request above the proxy's inbound message size, INVALID_ARGUMENT,
//!   ...; see [`grpc_refuses_request`]) is `Suspect` too: were it transient,
//!   a message that always gets it would block its queue or FIFO group for
//!   good. Outages (UNAVAILABLE, DEADLINE_EXCEEDED, a broken connection)
//!   stay `Transient`.

use std::fmt;

use super::message::TopicMessageType;
use super::pb;

/// The v2 `Code` a server answered with, kept as its protobuf name (for
/// metrics labels and logs) and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCode(pub i32);

impl ServerCode {
    pub fn name(&self) -> &'static str {
        pb::Code::try_from(self.0)
            .map(|c| c.as_str_name())
            .unwrap_or("UNKNOWN_CODE")
    }
    pub(crate) fn code(&self) -> Option<pb::Code> {
        pb::Code::try_from(self.0).ok()
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

fn types(list: &[TopicMessageType]) -> String {
    list.iter()
        .map(TopicMessageType::as_str)
        .collect::<Vec<_>>()
        .join("|")
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    // ---------------------------------------------------------- permanent
    #[error(
        "topic `{topic}` on 5.x accepts {} messages only; message `{message_id}` is {actual} \
         — map this route's messages to {} (see the route's message-type mapping) or create a \
         {actual} topic as the target",
        types(accepted),
        types(accepted)
    )]
    TypeMismatch {
        topic: String,
        message_id: String,
        actual: TopicMessageType,
        accepted: Vec<TopicMessageType>,
    },

    #[error(
        "message `{message_id}` for topic `{topic}` has a {size}-byte body, above the 5.x limit \
         of {max} bytes — raise the server's max message size or leave this message quarantined"
    )]
    BodyTooLarge {
        topic: String,
        message_id: String,
        size: usize,
        max: usize,
    },

    #[error(
        "message `{message_id}` for topic `{topic}` has an empty body, which 5.x rejects \
         — leave it quarantined or drop it"
    )]
    BodyEmpty { topic: String, message_id: String },

    #[error(
        "message `{message_id}` for topic `{topic}` is not valid on 5.x ({code}): {reason} \
         — fix the property mapping for this route or leave the message quarantined"
    )]
    IllegalMessage {
        topic: String,
        message_id: String,
        /// Protobuf name of the v2 code that applies (`ILLEGAL_MESSAGE_TAG`, ...).
        code: &'static str,
        reason: String,
    },

    #[error(
        "5.x rejected topic name `{topic}` ({reason}) — fix the target topic name in the route"
    )]
    IllegalTopic { topic: String, reason: String },

    #[error(
        "5.x permanently rejected message `{message_id}` for topic `{topic}` with {code}: \
         {reason} — {remedy}",
        remedy = remedy(*code)
    )]
    Rejected {
        topic: String,
        message_id: String,
        code: ServerCode,
        reason: String,
    },

    // ---------------------------------------------------------- retriable
    #[error(
        "topic `{topic}` does not exist on 5.x — create it (with the right +message.type) \
         before forwarding; the bridge keeps retrying"
    )]
    TopicNotFound { topic: String },

    #[error(
        "5.x has no writable queue for topic `{topic}` — check the topic's permission and \
         brokers; the bridge keeps retrying"
    )]
    NoWritableQueue { topic: String },

    #[error(
        "5.x refused our credentials for topic `{topic}` ({code}): {reason} — check the 5.x \
         access key / secret key and the ACL granting publish on this topic"
    )]
    Unauthorized {
        topic: String,
        code: ServerCode,
        reason: String,
    },

    #[error(
        "5.x answered {code} for `{what}` after {attempts} attempt(s): {reason} — transient; \
         the bridge retries (check 5.x broker health if it persists)"
    )]
    Retriable {
        /// Topic and message id (or RPC) concerned.
        what: String,
        code: ServerCode,
        reason: String,
        attempts: u32,
    },

    #[error(
        "5.x endpoint {endpoint} failed for `{what}` after {attempts} attempt(s): {status}: \
         {reason} — check that the 5.x proxy is up and reachable (endpoints, TLS setting)"
    )]
    Transport {
        what: String,
        endpoint: String,
        /// gRPC status code name, e.g. `Unavailable`.
        status: String,
        reason: String,
        attempts: u32,
    },

    #[error(
        "5.x endpoint {endpoint} refused `{what}` with gRPC status {code:?} after {attempts} \
         attempt(s): {reason} — {remedy}; the bridge retries, and quarantines the message if \
         it keeps being refused while other messages to the topic are accepted",
        remedy = grpc_remedy(*code)
    )]
    Refused {
        what: String,
        endpoint: String,
        /// A code for which [`grpc_refuses_request`] holds.
        code: tonic::Code,
        reason: String,
        attempts: u32,
    },

    #[error(
        "5.x answered {code} for topic `{topic}`: {reason} — the route's target or the \
         [target] settings are wrong for every message (endpoint, server features, quotas); \
         the route is stalled until this is fixed"
    )]
    Misconfigured {
        topic: String,
        code: ServerCode,
        reason: String,
    },

    #[error("5.x client configuration is invalid: {reason} — fix the [target] section")]
    Config { reason: String },

    #[error("the 5.x publisher is shut down; `{what}` was not sent — restart the bridge")]
    Shutdown { what: String },
}

impl PublishError {
    /// True when the server refused the message's delivery time
    /// (ILLEGAL_DELIVERY_TIME): some servers refuse a time that is not in
    /// the future, which the pipeline then clamps (send.rs).
    pub fn refuses_delivery_time(&self) -> bool {
        matches!(
            self,
            PublishError::IllegalMessage { code, .. }
                if *code == pb::Code::IllegalDeliveryTime.as_str_name()
        )
    }

    /// True when this message can never be accepted by its target topic as
    /// it is (quarantine it); false when a retry may succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::TypeMismatch { .. }
                | PublishError::BodyTooLarge { .. }
                | PublishError::BodyEmpty { .. }
                | PublishError::IllegalMessage { .. }
                | PublishError::Rejected { .. }
        )
    }

    /// How the pipeline treats this failure (see [`Disposition`]).
    pub fn disposition(&self) -> Disposition {
        match self {
            PublishError::TypeMismatch { .. }
            | PublishError::BodyTooLarge { .. }
            | PublishError::BodyEmpty { .. }
            | PublishError::IllegalMessage { .. }
            | PublishError::Rejected { .. } => Disposition::Message,
            PublishError::IllegalTopic { .. }
            | PublishError::TopicNotFound { .. }
            | PublishError::NoWritableQueue { .. }
            | PublishError::Unauthorized { .. }
            | PublishError::Misconfigured { .. }
            | PublishError::Config { .. } => Disposition::Route,
            PublishError::Retriable { code, .. }
                if code.code() == Some(pb::Code::TooManyRequests) =>
            {
                Disposition::Transient
            }
            PublishError::Retriable { .. } | PublishError::Refused { .. } => Disposition::Suspect,
            PublishError::Transport { .. } | PublishError::Shutdown { .. } => {
                Disposition::Transient
            }
        }
    }

    /// A short stable label for metrics (`send errors by code`).
    pub fn code_label(&self) -> &'static str {
        match self {
            PublishError::TypeMismatch { .. } => "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE",
            PublishError::BodyTooLarge { .. } => "MESSAGE_BODY_TOO_LARGE",
            PublishError::BodyEmpty { .. } => "MESSAGE_BODY_EMPTY",
            PublishError::IllegalMessage { code, .. } => code,
            PublishError::IllegalTopic { .. } => "ILLEGAL_TOPIC",
            PublishError::Rejected { code, .. } => code.name(),
            PublishError::TopicNotFound { .. } => "TOPIC_NOT_FOUND",
            PublishError::NoWritableQueue { .. } => "NO_WRITABLE_QUEUE",
            PublishError::Unauthorized { code, .. } => code.name(),
            PublishError::Misconfigured { code, .. } => code.name(),
            PublishError::Retriable { code, .. } => code.name(),
            PublishError::Refused { code, .. } => grpc_label(*code),
            PublishError::Transport { .. } => "TRANSPORT",
            PublishError::Config { .. } => "CONFIG",
            PublishError::Shutdown { .. } => "SHUTDOWN",
        }
    }
}

fn remedy(code: ServerCode) -> &'static str {
    use pb::Code as C;
    match code.code() {
        Some(C::MessagePropertyConflictWithType) => {
            "the target topic's message type differs from this message's type; fix the route's \
             type mapping or the topic's +message.type"
        }
        Some(C::IllegalDeliveryTime) => {
            "the delivery time is outside what the target accepts; check the DELAY mapping \
             (past times are clamped, the server's max delay applies)"
        }
        Some(C::MessagePropertiesTooLarge) | Some(C::RequestHeaderFieldsTooLarge) => {
            "the message carries too many or too large properties; drop or shorten properties \
             in the route's mapping"
        }
        Some(C::PayloadTooLarge) | Some(C::MessageBodyTooLarge) => {
            "raise the server's max message size or leave this message quarantined"
        }
        Some(C::MessageCorrupted) => "the body digest did not match; replay it from quarantine",
        _ => "inspect the message in quarantine and fix the route's mapping",
    }
}

/// True for the gRPC statuses that refuse this one request rather than say
/// the endpoint is down: a message that gets one again and again while its
/// neighbours pass is poison. UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
/// ABORTED (outages, failovers, dropped connections) are not among them;
/// UNAUTHENTICATED / PERMISSION_DENIED are the route's (credentials).
pub(crate) fn grpc_refuses_request(code: tonic::Code) -> bool {
    use tonic::Code as G;
    matches!(
        code,
        // tonic's answer to a request above the server's
        // max_decoding_message_size; a proxy out of some per-request quota.
        G::ResourceExhausted
            | G::InvalidArgument
            | G::OutOfRange
            | G::FailedPrecondition
            // A proxy failing on this request (a handler's error or panic).
            | G::Internal
            | G::Unknown
            | G::DataLoss
    )
}

fn grpc_remedy(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::ResourceExhausted => {
            "the request is likely larger than the 5.x proxy accepts (its gRPC max inbound \
             message size): raise that limit on the proxy"
        }
        _ => "the 5.x proxy refuses this request itself: see the proxy's log for why",
    }
}

fn grpc_label(code: tonic::Code) -> &'static str {
    use tonic::Code as G;
    match code {
        G::ResourceExhausted => "GRPC_RESOURCE_EXHAUSTED",
        G::InvalidArgument => "GRPC_INVALID_ARGUMENT",
        G::OutOfRange => "GRPC_OUT_OF_RANGE",
        G::FailedPrecondition => "GRPC_FAILED_PRECONDITION",
        G::Internal => "GRPC_INTERNAL",
        G::Unknown => "GRPC_UNKNOWN",
        G::DataLoss => "GRPC_DATA_LOSS",
        _ => "GRPC_OTHER",
    }
}

/// How a non-OK v2 status is to be treated. Every v2 code is listed in
/// [`classify`] deliberately; the pipeline turns the resulting
/// [`PublishError`] into a [`Disposition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeClass {
    Ok,
    /// Retry with backoff (throttling, server-side timeouts, HA trouble,
    /// and rejections that do not name anything of the message).
    Retriable,
    TopicNotFound,
    Unauthorized,
    IllegalTopic,
    /// The target or the client setup is wrong for every message of the
    /// route (access point, unsupported feature): stall the route.
    Misconfigured,
    /// A property of the message is invalid (quarantine).
    IllegalMessage,
    BodyTooLarge,
    BodyEmpty,
    /// Any other rejection that names the message itself (quarantine).
    Permanent,
}

/// [`classify`], told by the status message where a code alone misleads:
/// the Java proxy (5.5.0) answers MESSAGE_PROPERTY_CONFLICT_WITH_TYPE with
/// "the expected type is UNSPECIFIED" for every send while it cannot read
/// the topic's config (its broker is down). That names no fault of the
/// message: retry (the route stalls and reports), never quarantine.
pub(crate) fn classify_status(code: i32, message: &str) -> CodeClass {
    if code == pb::Code::MessagePropertyConflictWithType as i32
        && message.contains("expected type is UNSPECIFIED")
    {
        return CodeClass::Retriable;
    }
    classify(code)
}

pub(crate) fn classify(code: i32) -> CodeClass {
    use pb::Code as C;
    let Ok(code) = pb::Code::try_from(code) else {
        // A code this build does not know says nothing about the message:
        // retry; the pipeline's poison rule still catches a message refused
        // again and again while its neighbours pass.
        return CodeClass::Retriable;
    };
    match code {
        C::Ok | C::MultipleResults => CodeClass::Ok,
        // Transient: the server or its broker is busy, slow or failing over.
        C::TooManyRequests
        | C::InternalError
        | C::InternalServerError
        | C::HaNotAvailable
        | C::ProxyTimeout
        | C::MasterPersistenceTimeout
        | C::SlavePersistenceTimeout
        | C::RequestTimeout
        // Client lifecycle hiccups: the settings for our client id are not
        // (yet) known to this proxy; re-handshake and retry.
        | C::UnrecognizedClientType
        | C::ClientIdRequired
        | C::PreconditionFailed
        | C::InvalidClientProperties
        // A proxy restarted between prepare and commit forgot the
        // transaction: a new prepare delivers the message.
        | C::InvalidTransactionId
        // BAD_REQUEST names nothing: the rocketmq-rust proxy answers it for
        // every send while its broker is down. Retried; a message refused
        // while its neighbours pass is caught as poison.
        | C::BadRequest
        | C::FailedToConsumeMessage
        | C::Unspecified => CodeClass::Retriable,
        C::NotFound | C::TopicNotFound => CodeClass::TopicNotFound,
        C::Unauthorized | C::Forbidden | C::PaymentRequired => CodeClass::Unauthorized,
        C::IllegalTopic | C::IllegalLiteTopic => CodeClass::IllegalTopic,
        // Not about one message: the endpoint, the server's features or a
        // quota of the whole target.
        C::IllegalAccessPoint
        | C::NotImplemented
        | C::Unsupported
        | C::VersionUnsupported
        | C::VerifyFifoMessageUnsupported
        | C::LiteTopicQuotaExceeded
        | C::LiteSubscriptionQuotaExceeded
        // Consumer-side codes a producer should never see: a wrong endpoint.
        | C::IllegalConsumerGroup
        | C::ConsumerGroupNotFound
        | C::IllegalFilterExpression
        | C::IllegalInvisibleTime
        | C::InvalidReceiptHandle
        | C::IllegalPollingTime
        | C::IllegalOffset
        | C::MessageNotFound
        | C::OffsetNotFound => CodeClass::Misconfigured,
        C::IllegalMessageTag
        | C::IllegalMessageKey
        | C::IllegalMessageGroup
        | C::IllegalMessagePropertyKey
        | C::IllegalMessageId
        | C::IllegalDeliveryTime
        | C::MessagePropertiesTooLarge
        | C::RequestHeaderFieldsTooLarge => CodeClass::IllegalMessage,
        C::MessageBodyTooLarge | C::PayloadTooLarge => CodeClass::BodyTooLarge,
        C::MessageBodyEmpty => CodeClass::BodyEmpty,
        C::MessagePropertyConflictWithType | C::MessageCorrupted => CodeClass::Permanent,
    }
}

/// What the pipeline does with a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The message itself can never be accepted as it is: quarantine it.
    Message,
    /// The route's target is misconfigured (topic missing, credentials,
    /// access point): stall the route, quarantine nothing, retry slowly.
    Route,
    /// Retry; if this message keeps being refused while other messages to
    /// the same topic are accepted, it is poison.
    Suspect,
    /// Retry; never the message's fault (throttling, transport, shutdown).
    Transient,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_codes() {
        use pb::Code as C;
        for c in [
            C::TooManyRequests,
            C::InternalServerError,
            C::ProxyTimeout,
            C::MasterPersistenceTimeout,
            C::SlavePersistenceTimeout,
            C::HaNotAvailable,
        ] {
            assert_eq!(classify(c as i32), CodeClass::Retriable, "{c:?}");
        }
        assert_eq!(
            classify(C::MessagePropertyConflictWithType as i32),
            CodeClass::Permanent
        );
        // What the Java proxy (5.5.0) answers every send while it cannot
        // read the topic's config from its broker (broker down): the type
        // conflict is with "UNSPECIFIED", nothing about the message.
        let unknown_type =
            "org.apache.rocketmq.proxy.common.ProxyException: TopicMessageType validate \
                            failed, the expected type is UNSPECIFIED, but actual type is FIFO";
        assert_eq!(
            classify_status(C::MessagePropertyConflictWithType as i32, unknown_type),
            CodeClass::Retriable
        );
        let real_conflict =
            "TopicMessageType validate failed, the expected type is NORMAL, but actual \
                             type is FIFO";
        assert_eq!(
            classify_status(C::MessagePropertyConflictWithType as i32, real_conflict),
            CodeClass::Permanent
        );
        assert_eq!(
            classify(C::MessageBodyTooLarge as i32),
            CodeClass::BodyTooLarge
        );
        assert_eq!(
            classify(C::IllegalMessageTag as i32),
            CodeClass::IllegalMessage
        );
        assert_eq!(classify(C::TopicNotFound as i32), CodeClass::TopicNotFound);
        assert_eq!(classify(C::IllegalTopic as i32), CodeClass::IllegalTopic);
        assert_eq!(classify(C::Ok as i32), CodeClass::Ok);
        assert_eq!(classify(59999), CodeClass::Retriable);
        // Unknown codes and BAD_REQUEST name nothing of the message.
        assert_eq!(classify(49999), CodeClass::Retriable);
        assert_eq!(classify(C::BadRequest as i32), CodeClass::Retriable);
        assert_eq!(
            classify(C::InvalidTransactionId as i32),
            CodeClass::Retriable
        );
        assert_eq!(
            classify(C::IllegalAccessPoint as i32),
            CodeClass::Misconfigured
        );
    }

    #[test]
    fn every_code_has_a_deliberate_disposition() {
        use pb::Code as C;
        let server = |code: C| RpcLike(code as i32);
        let expect = [
            (C::BadRequest, Disposition::Suspect),
            (C::InternalError, Disposition::Suspect),
            (C::TooManyRequests, Disposition::Transient),
            (C::InvalidTransactionId, Disposition::Suspect),
            (C::TopicNotFound, Disposition::Route),
            (C::NotFound, Disposition::Route),
            (C::Unauthorized, Disposition::Route),
            (C::Forbidden, Disposition::Route),
            (C::IllegalAccessPoint, Disposition::Route),
            (C::IllegalTopic, Disposition::Route),
            (C::MessagePropertyConflictWithType, Disposition::Message),
            (C::IllegalMessageTag, Disposition::Message),
            (C::MessageBodyTooLarge, Disposition::Message),
            (C::MessageBodyEmpty, Disposition::Message),
        ];
        for (code, want) in expect {
            assert_eq!(server(code).disposition(), want, "{code:?}");
        }
        assert_eq!(RpcLike(49999).disposition(), Disposition::Suspect);
    }

    #[test]
    fn grpc_refusals_of_the_request_are_suspect_and_outages_transient() {
        use tonic::Code as G;
        let grpc = |code| {
            super::super::client::RpcFailure::Grpc {
                endpoint: "proxy:8081".into(),
                code,
                message: "x".into(),
                attempts: 3,
            }
            .into_publish_error(super::super::client::FailureContext {
                topic: "t",
                message_id: Some("m"),
                body_len: 1,
                max_body_size: 10,
                rpc: "SendMessage",
            })
        };
        for code in [
            G::ResourceExhausted,
            G::InvalidArgument,
            G::OutOfRange,
            G::Internal,
        ] {
            assert_eq!(grpc(code).disposition(), Disposition::Suspect, "{code:?}");
            assert!(!grpc(code).is_permanent());
        }
        for code in [
            G::Unavailable,
            G::DeadlineExceeded,
            G::Cancelled,
            G::Aborted,
        ] {
            assert_eq!(grpc(code).disposition(), Disposition::Transient, "{code:?}");
        }
        assert_eq!(grpc(G::Unauthenticated).disposition(), Disposition::Route);
        let e = grpc(G::ResourceExhausted);
        assert_eq!(e.code_label(), "GRPC_RESOURCE_EXHAUSTED");
        let s = e.to_string();
        assert!(s.contains("proxy:8081") && s.contains("message m") && s.contains("max inbound"));
    }

    /// The PublishError the client builds for a server answer with `code`.
    struct RpcLike(i32);
    impl RpcLike {
        fn disposition(&self) -> Disposition {
            super::super::client::RpcFailure::Server {
                code: self.0,
                message: "x".into(),
                attempts: 1,
            }
            .into_publish_error(super::super::client::FailureContext {
                topic: "t",
                message_id: Some("m"),
                body_len: 1,
                max_body_size: 10,
                rpc: "SendMessage",
            })
            .disposition()
        }
    }

    #[test]
    fn display_names_topic_message_and_remedy() {
        let e = PublishError::TypeMismatch {
            topic: "orders".into(),
            message_id: "ID1".into(),
            actual: TopicMessageType::Normal,
            accepted: vec![TopicMessageType::Fifo],
        };
        let s = e.to_string();
        assert!(s.contains("`orders`") && s.contains("`ID1`") && s.contains("FIFO"));
        assert!(e.is_permanent());
        let e = PublishError::TopicNotFound {
            topic: "orders".into(),
        };
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("create it"));
        let e = PublishError::Rejected {
            topic: "t".into(),
            message_id: "m".into(),
            code: ServerCode(pb::Code::MessagePropertyConflictWithType as i32),
            reason: "x".into(),
        };
        assert!(e
            .to_string()
            .contains("MESSAGE_PROPERTY_CONFLICT_WITH_TYPE"));
        assert_eq!(e.code_label(), "MESSAGE_PROPERTY_CONFLICT_WITH_TYPE");
    }
}

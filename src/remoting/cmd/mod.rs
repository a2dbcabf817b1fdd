//! Typed requests, one file per concern. Each file builds the request
//! (`extFields` with the Java header field names), parses the response,
//! and adds the matching method to [`super::RemotingClient`]. Building and
//! parsing are plain functions, tested without a socket.

pub mod consumer;
pub mod lock;
pub mod offset;
pub mod pull;
pub mod route;
pub mod send;
pub mod topic;
pub mod transaction;

use super::error::{RemotingError, Result};
use super::header::RemotingCommand;

/// The typed error for a response whose code the caller does not expect.
pub(crate) fn broker_error(addr: &str, response: &RemotingCommand) -> RemotingError {
    RemotingError::Broker {
        addr: addr.to_string(),
        code: response.code,
        remark: response.remark.clone(),
    }
}

/// `response` if it is SUCCESS, else the broker error.
pub(crate) fn expect_success(addr: &str, response: RemotingCommand) -> Result<RemotingCommand> {
    if response.code == super::codes::response::SUCCESS {
        Ok(response)
    } else {
        Err(broker_error(addr, &response))
    }
}

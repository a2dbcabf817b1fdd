//! END_TRANSACTION: commits or rolls back a half (prepared) message, as a
//! 4.x transactional producer does after its local transaction. Used by
//! tests and tooling to create real committed transactional messages.

use super::super::codes::request;
use super::super::error::{RemotingError, Result};
use super::super::header::RemotingCommand;
use super::super::RemotingClient;
use super::send::SendResult;

/// `commitOrRollback` values (Java `MessageSysFlag`).
pub const COMMIT: i32 = 8;
pub const ROLLBACK: i32 = 12;

/// The commit log offset encoded in the last 16 hex digits of an offset message id.
pub fn commit_log_offset_of(offset_msg_id: &str) -> Result<i64> {
    let hex = offset_msg_id
        .len()
        .checked_sub(16)
        .and_then(|start| offset_msg_id.get(start..))
        .ok_or_else(|| {
            RemotingError::InvalidRequest(format!("`{offset_msg_id}` is not an offset message id"))
        })?;
    u64::from_str_radix(hex, 16).map(|v| v as i64).map_err(|_| {
        RemotingError::InvalidRequest(format!("`{offset_msg_id}` is not an offset message id"))
    })
}

pub fn end_transaction_command(
    producer_group: &str,
    sent: &SendResult,
    msg_id: &str,
    commit: bool,
) -> Result<RemotingCommand> {
    let commit_log_offset = commit_log_offset_of(&sent.offset_msg_id)?;
    let transaction_id = sent
        .transaction_id
        .clone()
        .unwrap_or_else(|| msg_id.to_string());
    let mut cmd = RemotingCommand::request(request::END_TRANSACTION)
        .with_ext("producerGroup", producer_group)
        .with_ext("tranStateTableOffset", sent.queue_offset)
        .with_ext("commitLogOffset", commit_log_offset)
        .with_ext("commitOrRollback", if commit { COMMIT } else { ROLLBACK })
        .with_ext("fromTransactionCheck", "false")
        .with_ext("msgId", msg_id)
        .with_ext("transactionId", transaction_id);
    cmd.remark = Some("bridge end transaction".into());
    Ok(cmd)
}

impl RemotingClient {
    /// Ends a transaction (oneway, as the Java producer sends it).
    pub async fn end_transaction(
        &self,
        broker: &str,
        producer_group: &str,
        sent: &SendResult,
        msg_id: &str,
        commit: bool,
    ) -> Result<()> {
        let cmd = end_transaction_command(producer_group, sent, msg_id, commit)?;
        self.invoke_oneway(broker, cmd).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_log_offset_is_read_from_the_offset_msg_id() {
        assert_eq!(
            commit_log_offset_of("7F00000100002A9F00000000000004D2").unwrap(),
            1234
        );
        assert!(commit_log_offset_of("xyz").is_err());
    }
}

//! GET_ROUTEINFO_BY_TOPIC against a name server.

use crate::remoting::codes::{request, response};
use crate::remoting::error::Result;
use crate::remoting::header::RemotingCommand;
use crate::remoting::route::TopicRoute;
use crate::remoting::RemotingClient;

pub fn build_route_request(topic: &str) -> RemotingCommand {
    RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with_ext("topic", topic)
}

/// TOPIC_NOT_EXIST is `None`; SUCCESS carries the route in the body.
pub fn parse_route_response(addr: &str, resp: RemotingCommand) -> Result<Option<TopicRoute>> {
    match resp.code {
        response::TOPIC_NOT_EXIST => Ok(None),
        response::SUCCESS => Ok(Some(TopicRoute::parse(&resp.body)?)),
        _ => Err(super::broker_error(addr, &resp)),
    }
}

impl RemotingClient {
    /// The route of `topic` from the name server at `namesrv_addr`;
    /// `None` when the topic does not exist.
    pub async fn get_topic_route(
        &self,
        namesrv_addr: &str,
        topic: &str,
    ) -> Result<Option<TopicRoute>> {
        let resp = self
            .invoke(
                namesrv_addr,
                build_route_request(topic),
                self.request_timeout(),
            )
            .await?;
        parse_route_response(namesrv_addr, resp)
    }
}

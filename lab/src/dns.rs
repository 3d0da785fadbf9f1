//! Sending crafted DNS responses through the lab: from a resolver's port 53 on one side
//! to a client on the other, so the gateway's program sees answers cross it.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use anyhow::{Context as _, Result};

use crate::netns::in_netns;

/// The port DNS answers come from.
pub const DNS_PORT: u16 = 53;

/// Sends each message as one UDP datagram from `resolver`:53 inside `ns` to `client`.
/// Nobody need listen at `client`: the gateway's program sees the datagrams on their way.
pub fn send_responses(
    ns: &str,
    resolver: Ipv4Addr,
    client: SocketAddrV4,
    messages: Vec<Vec<u8>>,
) -> Result<()> {
    in_netns(ns, move || -> Result<()> {
        let socket = UdpSocket::bind(SocketAddrV4::new(resolver, DNS_PORT))
            .with_context(|| format!("binding {resolver}:{DNS_PORT}"))?;
        for message in &messages {
            socket
                .send_to(message, client)
                .with_context(|| format!("sending a DNS response to {client}"))?;
        }
        Ok(())
    })?
}

//! Route lookups (what `ip route get` asks): which interface of this host
//! a Pod's address lives behind.

use std::net::IpAddr;

use netlink_packet_route::{
    route::{RouteAttribute, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

use super::netlink::{NetlinkError, RtNetlink};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route lookup of {ip}: {source}")]
    Lookup {
        ip: IpAddr,
        #[source]
        source: NetlinkError,
    },
    #[error("route lookup of {ip}: the kernel's reply has no output interface")]
    NoInterface { ip: IpAddr },
    #[error("route lookup of {ip}: interface index {ifindex} has no name (it just went away?)")]
    UnnamedInterface { ip: IpAddr, ifindex: u32 },
}

/// Where the kernel sends packets for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// On a link of this host: no gateway in between. This is where a
    /// local Pod's veth (routed CNIs) or bridge (bridged CNIs) shows up.
    Direct { iface: String },
    /// Through a gateway: the address is not on this host.
    Gateway { iface: String },
    /// One of this host's own addresses, or not unicast at all.
    NotUnicast,
}

/// One rtnetlink socket for a batch of lookups.
pub struct RouteLookup {
    netlink: RtNetlink,
}

impl RouteLookup {
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: RtNetlink::open()?,
        })
    }

    /// The route the kernel would take to `ip` now.
    pub fn route_to(&mut self, ip: IpAddr) -> Result<Route, RouteError> {
        let mut request = RouteMessage::default();
        request.header.address_family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        request.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        request
            .attributes
            .push(RouteAttribute::Destination(ip.into()));
        let reply = self
            .netlink
            .get(RouteNetlinkMessage::GetRoute(request))
            .map_err(|source| RouteError::Lookup { ip, source })?;
        let RouteNetlinkMessage::NewRoute(route) = reply else {
            return Err(RouteError::NoInterface { ip });
        };
        if route.header.kind != RouteType::Unicast {
            return Ok(Route::NotUnicast);
        }
        let mut ifindex = None;
        let mut gateway = false;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => ifindex = Some(*index),
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = true,
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or(RouteError::NoInterface { ip })?;
        let iface = interface_name(ifindex).ok_or(RouteError::UnnamedInterface { ip, ifindex })?;
        Ok(if gateway {
            Route::Gateway { iface }
        } else {
            Route::Direct { iface }
        })
    }
}

fn interface_name(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|name| name.into_string().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_is_not_a_direct_route() {
        let mut lookup = RouteLookup::open().unwrap();
        assert_eq!(
            lookup.route_to("127.0.0.1".parse().unwrap()).unwrap(),
            Route::NotUnicast
        );
    }

    #[test]
    fn unreachable_address_is_an_error_naming_it() {
        let mut lookup = RouteLookup::open().unwrap();
        // 240.0.0.0/4 is reserved; with no default route it is unreachable,
        // with one it goes through the gateway: either way not direct.
        match lookup.route_to("240.0.0.1".parse().unwrap()) {
            Err(e) => assert!(e.to_string().contains("240.0.0.1"), "{e}"),
            Ok(route) => assert!(
                !matches!(route, Route::Direct { .. }),
                "240.0.0.1 cannot be on a local link: {route:?}"
            ),
        }
    }
}

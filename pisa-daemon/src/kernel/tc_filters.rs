//! The bpf filters on an interface's clsact hooks, listed over rtnetlink:
//! on kernels without TCX this is how an attachment is told to be ours
//! or another root's (a cls_bpf filter has no pin to open).

use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};

use super::netlink::{NetlinkError, RtNetlink};

/// `TC_H_CLSACT` and its two hooks (`TC_H_MIN_INGRESS`, `TC_H_MIN_EGRESS`).
const CLSACT_MAJOR: u16 = 0xffff;
const MIN_INGRESS: u16 = 0xfff2;
const MIN_EGRESS: u16 = 0xfff3;

/// The programs (id, name) the bpf filters on `ifindex`'s clsact egress
/// (or ingress) hook run; empty without a clsact qdisc.
pub fn bpf_filter_programs(
    nl: &mut RtNetlink,
    ifindex: u32,
    egress: bool,
) -> Result<Vec<(u32, String)>, NetlinkError> {
    let mut request = TcMessage::default();
    request.header.index = ifindex as i32;
    request.header.parent = TcHandle {
        major: CLSACT_MAJOR,
        minor: if egress { MIN_EGRESS } else { MIN_INGRESS },
    };
    let replies = match nl.dump(RouteNetlinkMessage::GetTrafficFilter(request)) {
        Ok(replies) => replies,
        // No clsact qdisc: no filters.
        Err(e) if e.errno() == Some(libc::EINVAL) || e.errno() == Some(libc::ENOENT) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut programs = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(message) = reply else {
            continue;
        };
        if message.header.index != ifindex as i32 {
            continue;
        }
        let (mut id, mut name) = (None, String::new());
        for attribute in &message.attributes {
            let TcAttribute::Options(options) = attribute else {
                continue;
            };
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(prog_id)) => id = Some(*prog_id),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(prog_name)) => {
                        name = prog_name.clone()
                    }
                    _ => {}
                }
            }
        }
        if let Some(id) = id {
            programs.push((id, name));
        }
    }
    Ok(programs)
}

//! Header parsing. Every read goes through `bpf_skb_load_bytes` with a
//! constant size, so offsets may vary (IPv4 options, IPv6 extension headers,
//! a VLAN tag) without the verifier having to prove packet-pointer ranges,
//! and headers in non-linear skb fragments are still readable.

use aya_ebpf::programs::TcContext;
use pisa_daemon_common::{
    reason, FlowKey, FAMILY_V4, FAMILY_V6, IFACE_FLAG_L3, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

/// IPv6 extension headers are walked at most this many times; a chain
/// longer than that fails open (`IPV6_EXT_LIMIT`).
const MAX_IPV6_EXT_HEADERS: usize = 6;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_NONE: u8 = 59;
const NEXTHDR_DEST: u8 = 60;

#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: u16,
    id: u16,
    frag_off_be: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
struct Ipv6Header {
    version_class_flow: [u8; 4],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
struct Ipv6ExtHeader {
    next_header: u8,
    len: u8,
    /// For the fragment header: offset (13 bits) and flags.
    frag_off_be: u16,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, u32> {
    ctx.load::<T>(offset).map_err(|_| reason::TRUNCATED)
}

/// A parsed packet: its 5-tuple and where its L4 header starts (for the
/// TCP flags and payload the SQL-identity path reads).
pub struct Packet {
    pub flow: FlowKey,
    pub l4_offset: usize,
}

/// Parses a packet into the 5-tuple used for classification. `Err` holds the
/// `reason::*` counter to bump; the caller lets the packet pass either way.
#[inline(always)]
pub fn parse(ctx: &TcContext, iface_flags: u32) -> Result<Packet, u32> {
    let l3_device = iface_flags & IFACE_FLAG_L3 != 0;

    if !l3_device {
        if let Some(flow) = fast_path(ctx) {
            return Ok(flow);
        }
    }
    let (ethertype, l3_offset) = if l3_device {
        // No MAC header: the IP version nibble says what follows. (It is
        // as reliable as skb->protocol on tunnels, and also holds under
        // BPF_PROG_TEST_RUN, which always derives protocol from a MAC header.)
        let first: u8 = load(ctx, 0)?;
        let ethertype = match first >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return Err(reason::NOT_IP),
        };
        (ethertype, 0)
    } else {
        ethernet(ctx)?
    };

    match ethertype {
        ETH_P_IP => ipv4(ctx, l3_offset),
        ETH_P_IPV6 => ipv6(ctx, l3_offset),
        _ => Err(reason::NOT_IP),
    }
}

/// The common case read straight from the linear packet data, without
/// helper calls: untagged Ethernet, then IPv4 without options or IPv6
/// without extension headers, then TCP/UDP. Anything else (or headers
/// outside the linear area) returns `None` and takes the general path.
#[inline(always)]
fn fast_path(ctx: &TcContext) -> Option<Packet> {
    const V4_END: usize = ETH_HLEN + 20 + 4;
    const V6_END: usize = ETH_HLEN + 40 + 4;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + V4_END > end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above (and again below
    // for IPv6); the verifier re-checks every access.
    let ethertype = u16::from_be(unsafe { core::ptr::read_unaligned((start + 12) as *const u16) });
    match ethertype {
        ETH_P_IP => {
            let ip = unsafe { core::ptr::read_unaligned((start + ETH_HLEN) as *const Ipv4Header) };
            if ip.version_ihl != 0x45
                || u16::from_be(ip.frag_off_be) & 0x1FFF != 0
                || (ip.protocol != PROTO_TCP && ip.protocol != PROTO_UDP)
            {
                return None;
            }
            let ports =
                unsafe { core::ptr::read_unaligned((start + ETH_HLEN + 20) as *const [u16; 2]) };
            let mut flow = FlowKey {
                family: FAMILY_V4,
                protocol: ip.protocol,
                src_port_be: ports[0],
                dst_port_be: ports[1],
                ..FlowKey::default()
            };
            flow.src_addr[..4].copy_from_slice(&ip.src);
            flow.dst_addr[..4].copy_from_slice(&ip.dst);
            Some(Packet {
                flow,
                l4_offset: ETH_HLEN + 20,
            })
        }
        ETH_P_IPV6 => {
            if start + V6_END > end {
                return None;
            }
            let ip = unsafe { core::ptr::read_unaligned((start + ETH_HLEN) as *const Ipv6Header) };
            if ip.version_class_flow[0] >> 4 != 6
                || (ip.next_header != PROTO_TCP && ip.next_header != PROTO_UDP)
            {
                return None;
            }
            let ports =
                unsafe { core::ptr::read_unaligned((start + ETH_HLEN + 40) as *const [u16; 2]) };
            Some(Packet {
                flow: FlowKey {
                    family: FAMILY_V6,
                    protocol: ip.next_header,
                    src_port_be: ports[0],
                    dst_port_be: ports[1],
                    src_addr: ip.src,
                    dst_addr: ip.dst,
                    ..FlowKey::default()
                },
                l4_offset: ETH_HLEN + 40,
            })
        }
        _ => None,
    }
}

/// Returns the ethertype after at most one VLAN tag, and where L3 starts.
#[inline(always)]
fn ethernet(ctx: &TcContext) -> Result<(u16, usize), u32> {
    let outer = u16::from_be(load::<u16>(ctx, 12)?);
    if outer != ETH_P_8021Q && outer != ETH_P_8021AD {
        if (ctx.len() as usize) < ETH_HLEN {
            return Err(reason::TRUNCATED);
        }
        return Ok((outer, ETH_HLEN));
    }
    let inner = u16::from_be(load::<u16>(ctx, ETH_HLEN + 2)?);
    if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
        return Err(reason::VLAN_DEPTH);
    }
    Ok((inner, ETH_HLEN + VLAN_HLEN))
}

#[inline(always)]
fn ipv4(ctx: &TcContext, offset: usize) -> Result<Packet, u32> {
    let ip: Ipv4Header = load(ctx, offset)?;
    let ihl = usize::from(ip.version_ihl & 0x0F) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 {
        return Err(reason::BAD_IP_HEADER);
    }
    // A non-first fragment has no L4 header; a first fragment does.
    if u16::from_be(ip.frag_off_be) & 0x1FFF != 0 {
        return Err(reason::FRAGMENT);
    }
    let mut flow = FlowKey {
        family: FAMILY_V4,
        protocol: ip.protocol,
        ..FlowKey::default()
    };
    flow.src_addr[..4].copy_from_slice(&ip.src);
    flow.dst_addr[..4].copy_from_slice(&ip.dst);
    ports(ctx, offset + ihl, flow)
}

#[inline(always)]
fn ipv6(ctx: &TcContext, offset: usize) -> Result<Packet, u32> {
    let ip: Ipv6Header = load(ctx, offset)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(reason::BAD_IP_HEADER);
    }
    let mut next = ip.next_header;
    let mut l4_offset = offset + 40;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let ext: Ipv6ExtHeader = load(ctx, l4_offset)?;
                next = ext.next_header;
                l4_offset += (usize::from(ext.len) + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let ext: Ipv6ExtHeader = load(ctx, l4_offset)?;
                next = ext.next_header;
                l4_offset += (usize::from(ext.len) + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let ext: Ipv6ExtHeader = load(ctx, l4_offset)?;
                if u16::from_be(ext.frag_off_be) & 0xFFF8 != 0 {
                    return Err(reason::FRAGMENT);
                }
                next = ext.next_header;
                l4_offset += 8;
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Err(reason::IPV6_EXT_LIMIT);
    }
    if next == NEXTHDR_NONE {
        return Err(reason::OTHER_L4);
    }
    let mut flow = FlowKey {
        family: FAMILY_V6,
        protocol: next,
        ..FlowKey::default()
    };
    flow.src_addr = ip.src;
    flow.dst_addr = ip.dst;
    ports(ctx, l4_offset, flow)
}

#[inline(always)]
fn ports(ctx: &TcContext, offset: usize, mut flow: FlowKey) -> Result<Packet, u32> {
    if flow.protocol != PROTO_TCP && flow.protocol != PROTO_UDP {
        return Err(reason::OTHER_L4);
    }
    // Source and destination ports open both TCP and UDP headers.
    let ports: [u16; 2] = load(ctx, offset)?;
    flow.src_port_be = ports[0];
    flow.dst_port_be = ports[1];
    Ok(Packet {
        flow,
        l4_offset: offset,
    })
}

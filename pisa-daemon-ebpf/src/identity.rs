//! The kernel half of SQL identity: hand the first bytes of a connection to
//! userspace, which reads who is connecting (PostgreSQL's StartupMessage,
//! MySQL's HandshakeResponse) and tags the connection; and report the end
//! of a connection the daemon tagged, so its tag goes with it.
//!
//! Stateless per connection: a packet is a start when its payload begins
//! like one (a cheap 8-byte check), so no per-connection map is needed and
//! a daemon started mid-connection simply never sees one. Every path here
//! only reads: the packet passes whatever happens, and each outcome is
//! counted in `SQL_STATS`.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use pisa_daemon_common::{
    sql_reason, SQL_BUDGET_EVENTS, SQL_BUDGET_WINDOW_NS, SQL_CAPTURE_BYTES, SQL_EVENT_CLOSE,
    SQL_EVENT_START,
};

use crate::{
    maps::{SQL_BUDGET, SQL_EVENTS, SQL_STATS},
    parse::Packet,
};

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;

/// PostgreSQL protocol 3.x StartupMessage (3.0; 3.2 since PostgreSQL 18).
const PG_PROTOCOL_3: u32 = 0x0003_0000;
/// PostgreSQL SSLRequest and GSSENCRequest codes.
const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;
/// The longest StartupMessage PostgreSQL itself accepts (MAX_STARTUP_PACKET_LENGTH).
const PG_MAX_STARTUP: u32 = 10_000;
/// MySQL's CLIENT_PROTOCOL_41 capability, set by every client since 4.1.
const MYSQL_CLIENT_PROTOCOL_41: u32 = 0x0200;
/// The shortest MySQL HandshakeResponse41 (the SSL request's size).
const MYSQL_MIN_RESPONSE: u32 = 32;

/// Where the TCP payload starts and how long it is, or `None` for a
/// packet without one.
#[inline(always)]
fn payload(ctx: &TcContext, packet: &Packet) -> Option<(usize, u32)> {
    let data_offset: u8 = ctx.load(packet.l4_offset + 12).ok()?;
    let header_len = usize::from(data_offset >> 4) * 4;
    if header_len < 20 {
        return None;
    }
    let start = packet.l4_offset + header_len;
    let len = (ctx.len() as usize).checked_sub(start)?;
    if len == 0 {
        return None;
    }
    Some((start, len as u32))
}

/// Whether the first 8 payload bytes open a PostgreSQL start (startup,
/// SSL or GSS request), a MySQL handshake response, or a TLS ClientHello
/// (a direct-TLS start: counted as such by userspace).
#[inline(always)]
fn looks_like_start(head: &[u8; 8]) -> bool {
    let pg_len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let pg_code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if (8..=PG_MAX_STARTUP).contains(&pg_len)
        && (pg_code >> 16 == PG_PROTOCOL_3 >> 16
            || pg_code == PG_SSL_REQUEST
            || pg_code == PG_GSSENC_REQUEST)
    {
        return true;
    }
    let mysql_len = u32::from_le_bytes([head[0], head[1], head[2], 0]);
    let mysql_caps = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if head[3] == 1 && mysql_len >= MYSQL_MIN_RESPONSE && mysql_caps & MYSQL_CLIENT_PROTOCOL_41 != 0
    {
        return true;
    }
    head[0] == 0x16 && head[1] == 0x03 && head[5] == 0x01
}

/// Hands a connection start to userspace, if this packet is one; what
/// became of it (`sql_reason`), or `None` for a packet that is no start.
#[inline(always)]
pub fn inspect_start(ctx: &TcContext, packet: &Packet) -> Option<u32> {
    let (start, len) = payload(ctx, packet)?;
    if len < 8 {
        return None;
    }
    let head = ctx.load::<[u8; 8]>(start).ok()?;
    if !looks_like_start(&head) {
        return None;
    }
    Some(send(ctx, packet, SQL_EVENT_START, start, len))
}

/// Reports a FIN or RST of a connection the daemon tagged; what became of
/// the report (`sql_reason`), or `None` for any other packet.
#[inline(always)]
pub fn watch_close(ctx: &TcContext, packet: &Packet) -> Option<u32> {
    let flags = ctx.load::<u8>(packet.l4_offset + 13).ok()?;
    if flags & (TCP_FLAG_FIN | TCP_FLAG_RST) == 0 {
        return None;
    }
    Some(send(ctx, packet, SQL_EVENT_CLOSE, 0, 0))
}

/// Hands an event up; returns its `sql_reason`, counted.
#[inline(always)]
fn send(ctx: &TcContext, packet: &Packet, kind: u32, start: usize, len: u32) -> u32 {
    let outcome = hand_up(ctx, packet, kind, start, len);
    count(outcome);
    outcome
}

#[inline(always)]
fn hand_up(ctx: &TcContext, packet: &Packet, kind: u32, start: usize, len: u32) -> u32 {
    if !spend_budget() {
        return sql_reason::THROTTLED;
    }
    let Some(mut entry) = SQL_EVENTS.reserve(0) else {
        return sql_reason::RING_FULL;
    };
    let event = entry.as_mut_ptr();
    let captured = if len as usize > SQL_CAPTURE_BYTES {
        SQL_CAPTURE_BYTES as u32
    } else {
        len
    };
    // SAFETY: `event` points at a reserved, writable record of the ring
    // buffer's size; every field is written before it is submitted.
    unsafe {
        (*event).kind = kind;
        (*event).ifindex = (*ctx.skb.skb).ifindex;
        (*event).seen_ns = bpf_ktime_get_ns();
        (*event).payload_len = len;
        (*event).flow = packet.flow;
        (*event).captured = 0;
    }
    if captured > 0 {
        // The verifier needs the length bounded by the buffer here.
        let n = captured & (SQL_CAPTURE_BYTES as u32 * 2 - 1);
        if n == 0 || n as usize > SQL_CAPTURE_BYTES {
            entry.discard(0);
            return sql_reason::UNREADABLE;
        }
        // SAFETY: `bytes` holds SQL_CAPTURE_BYTES and n is at most that.
        let read = unsafe {
            aya_ebpf::helpers::bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                start as u32,
                (*event).bytes.as_mut_ptr() as *mut _,
                n,
            )
        };
        if read != 0 {
            entry.discard(0);
            return sql_reason::UNREADABLE;
        }
        // SAFETY: as above.
        unsafe { (*event).captured = n };
    }
    entry.submit(0);
    if kind == SQL_EVENT_START {
        sql_reason::STARTS_SENT
    } else {
        sql_reason::CLOSES_SENT
    }
}

/// Takes one event from this CPU's budget for the current window.
#[inline(always)]
fn spend_budget() -> bool {
    let Some(budget) = SQL_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU value; only this CPU touches it while we run.
    unsafe {
        if now.wrapping_sub((*budget).window_start_ns) > SQL_BUDGET_WINDOW_NS {
            (*budget).window_start_ns = now;
            (*budget).events = 0;
        }
        if (*budget).events >= SQL_BUDGET_EVENTS {
            return false;
        }
        (*budget).events += 1;
    }
    true
}

#[inline(always)]
fn count(reason: u32) {
    if let Some(stats) = SQL_STATS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).packets += 1 };
    }
}

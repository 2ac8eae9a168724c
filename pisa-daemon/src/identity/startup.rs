//! Reading who a client says it is from the first bytes of its connection:
//! PostgreSQL's StartupMessage (and SSL/GSS requests), MySQL's
//! HandshakeResponse41 (and SSL request), or a TLS ClientHello.
//!
//! Written for hostile input: every length is checked before it is used,
//! nothing allocates more than the input, and nothing can panic (a
//! property test feeds it random and mutated bytes). Messages longer than
//! the bytes the kernel hands up are read as far as they go.

use crate::model::SqlIdentity;

/// What a connection's first bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A PostgreSQL or MySQL start in clear: who is connecting.
    Identified(SqlIdentity),
    /// PostgreSQL SSLRequest: the server answers 'S' (TLS follows, the
    /// start is hidden) or 'N' (the StartupMessage follows in clear).
    PostgresSslRequest,
    /// PostgreSQL GSSENCRequest: as SSLRequest, for GSSAPI encryption.
    PostgresGssRequest,
    /// MySQL SSL request: TLS follows, the identity is hidden.
    MysqlSslRequest,
    /// A TLS ClientHello (direct TLS): the identity is hidden.
    TlsClientHello,
}

/// Why bytes are not a start message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("too short to be a start message")]
    Truncated,
    #[error("not a PostgreSQL, MySQL or TLS start")]
    Unknown,
    #[error("a start message that breaks its own format")]
    Malformed,
    #[error("a start message longer than the protocol allows")]
    Oversized,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Unknown => "unknown",
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
        }
    }
}

const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;
/// PostgreSQL's own bound on a StartupMessage (MAX_STARTUP_PACKET_LENGTH).
const PG_MAX_STARTUP: usize = 10_000;

const MYSQL_CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
const MYSQL_CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
const MYSQL_CLIENT_SSL: u32 = 0x0000_0800;
const MYSQL_CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
const MYSQL_CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
const MYSQL_CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
const MYSQL_CLIENT_PLUGIN_AUTH_LENENC_DATA: u32 = 0x0020_0000;
/// Fixed part of HandshakeResponse41: caps, max packet, charset, filler.
const MYSQL_FIXED: usize = 4 + 4 + 1 + 23;

/// Reads a start message. `bytes` are the first bytes of the stream (the
/// kernel hands up at most 512 of them).
pub fn parse(bytes: &[u8]) -> Result<Start, Rejected> {
    if bytes.len() < 8 {
        return Err(Rejected::Truncated);
    }
    if bytes[0] == 0x16 && bytes[1] == 0x03 && bytes[5] == 0x01 {
        return Ok(Start::TlsClientHello);
    }
    let pg_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let pg_code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if pg_code == PG_SSL_REQUEST && pg_len == 8 {
        return Ok(Start::PostgresSslRequest);
    }
    if pg_code == PG_GSSENC_REQUEST && pg_len == 8 {
        return Ok(Start::PostgresGssRequest);
    }
    if pg_code >> 16 == 3 && pg_len >= 8 {
        if pg_len > PG_MAX_STARTUP {
            return Err(Rejected::Oversized);
        }
        return postgres(&bytes[8..bytes.len().min(pg_len)], bytes.len() < pg_len);
    }
    if bytes[3] == 1 {
        let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
        let caps = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if caps & MYSQL_CLIENT_PROTOCOL_41 != 0 && len >= MYSQL_FIXED {
            let body = &bytes[4..bytes.len().min(4 + len)];
            return mysql(body, caps, len);
        }
    }
    Err(Rejected::Unknown)
}

/// `key\0value\0 … \0` pairs of a StartupMessage; the bytes may stop early.
fn postgres(mut pairs: &[u8], cut: bool) -> Result<Start, Rejected> {
    let mut who = SqlIdentity::default();
    // No NUL left: the message goes on beyond the bytes we have.
    while let Some((key, rest)) = cstring(pairs) {
        if key.is_empty() {
            break; // the terminating NUL
        }
        let Some((value, rest)) = cstring(rest) else {
            break;
        };
        let value = text(value)?;
        match key {
            b"user" => who.user = Some(value),
            b"database" => who.database = Some(value),
            b"application_name" => who.application = Some(value),
            _ => {}
        }
        pairs = rest;
    }
    if who.user.is_none() {
        // Every StartupMessage names its user (libpq sends it first).
        return Err(if cut {
            Rejected::Truncated
        } else {
            Rejected::Malformed
        });
    }
    if who.database.is_none() {
        // PostgreSQL's default: the database named like the user.
        who.database = who.user.clone();
    }
    Ok(Start::Identified(who))
}

fn mysql(body: &[u8], caps: u32, len: usize) -> Result<Start, Rejected> {
    if caps & MYSQL_CLIENT_SSL != 0 && len == MYSQL_FIXED {
        return Ok(Start::MysqlSslRequest);
    }
    let Some(mut rest) = body.get(MYSQL_FIXED..) else {
        return Err(Rejected::Truncated);
    };
    let (user, after) = cstring(rest).ok_or(Rejected::Truncated)?;
    let mut who = SqlIdentity {
        user: Some(text(user)?),
        ..SqlIdentity::default()
    };
    rest = after;
    // The auth response, whose length is given one of three ways.
    rest = if caps & MYSQL_CLIENT_PLUGIN_AUTH_LENENC_DATA != 0 {
        let (n, after) = lenenc(rest).ok_or(Rejected::Truncated)?;
        skip(after, n).ok_or(Rejected::Truncated)?
    } else if caps & MYSQL_CLIENT_SECURE_CONNECTION != 0 {
        let (&n, after) = rest.split_first().ok_or(Rejected::Truncated)?;
        skip(after, usize::from(n)).ok_or(Rejected::Truncated)?
    } else {
        cstring(rest).ok_or(Rejected::Truncated)?.1
    };
    if caps & MYSQL_CLIENT_CONNECT_WITH_DB != 0 {
        match cstring(rest) {
            Some((db, after)) => {
                let db = text(db)?;
                who.database = (!db.is_empty()).then_some(db);
                rest = after;
            }
            None => return Ok(Start::Identified(who)),
        }
    }
    if caps & MYSQL_CLIENT_PLUGIN_AUTH != 0 {
        match cstring(rest) {
            Some((_, after)) => rest = after,
            None => return Ok(Start::Identified(who)),
        }
    }
    if caps & MYSQL_CLIENT_CONNECT_ATTRS != 0 {
        if let Some((total, mut attrs)) = lenenc(rest) {
            attrs = &attrs[..attrs.len().min(total)];
            while let Some((key, after)) = lenenc_bytes(attrs) {
                let Some((value, after)) = lenenc_bytes(after) else {
                    break;
                };
                if key == b"program_name" {
                    who.application = Some(text(value)?);
                }
                attrs = after;
            }
        }
    }
    Ok(Start::Identified(who))
}

/// Bytes up to a NUL, and what follows it; `None` if there is no NUL.
fn cstring(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.iter().position(|b| *b == 0)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

/// MySQL's length-encoded integer.
fn lenenc(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    let width = match first {
        0..=0xFA => return Some((usize::from(first), rest)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let digits = rest.get(..width)?;
    let mut value: u64 = 0;
    for (i, byte) in digits.iter().enumerate() {
        value |= u64::from(*byte) << (8 * i);
    }
    Some((usize::try_from(value).ok()?, &rest[width..]))
}

fn lenenc_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (n, rest) = lenenc(bytes)?;
    Some((rest.get(..n)?, &rest[n..]))
}

fn skip(bytes: &[u8], n: usize) -> Option<&[u8]> {
    bytes.get(n..)
}

/// Names are UTF-8 in both protocols' usual configurations; anything else
/// is not trusted to compare equal to a claim's names.
fn text(bytes: &[u8]) -> Result<String, Rejected> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Rejected::Malformed)
}

#[cfg(test)]
mod tests;

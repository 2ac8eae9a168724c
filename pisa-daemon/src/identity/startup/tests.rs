use proptest::prelude::*;

use super::*;

/// A StartupMessage as libpq sends it (protocol 3.0).
fn pg_startup_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    for (k, v) in pairs {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn pg_startup(pairs: &[(&str, &str)]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    pg_startup_bytes(&pairs)
}

fn lenenc_str(s: &str) -> Vec<u8> {
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// A HandshakeResponse41 as libmariadb sends it: secure connection,
/// plugin auth, connect-with-db and attributes.
fn mysql_response(user: &str, db: Option<&str>, program: Option<&str>) -> Vec<u8> {
    let mut caps = MYSQL_CLIENT_PROTOCOL_41
        | MYSQL_CLIENT_SECURE_CONNECTION
        | MYSQL_CLIENT_PLUGIN_AUTH
        | MYSQL_CLIENT_CONNECT_ATTRS;
    if db.is_some() {
        caps |= MYSQL_CLIENT_CONNECT_WITH_DB;
    }
    let mut body = caps.to_le_bytes().to_vec();
    body.extend_from_slice(&16_777_216u32.to_le_bytes());
    body.push(45);
    body.extend_from_slice(&[0; 23]);
    body.extend_from_slice(user.as_bytes());
    body.push(0);
    body.push(20);
    body.extend_from_slice(&[7; 20]);
    if let Some(db) = db {
        body.extend_from_slice(db.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(b"mysql_native_password\0");
    let mut attrs = Vec::new();
    for (k, v) in [("_os", "Linux"), ("_client_name", "libmariadb")]
        .into_iter()
        .chain(program.map(|p| ("program_name", p)))
    {
        attrs.extend(lenenc_str(k));
        attrs.extend(lenenc_str(v));
    }
    body.push(attrs.len() as u8);
    body.extend(attrs);
    let len = body.len() as u32;
    let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, 1];
    out.extend(body);
    out
}

fn identified(user: &str, db: &str, app: Option<&str>) -> Start {
    Start::Identified(SqlIdentity {
        user: Some(user.into()),
        database: Some(db.into()),
        application: app.map(Into::into),
    })
}

#[test]
fn postgres_startup_gives_user_database_and_application() {
    let bytes = pg_startup(&[
        ("user", "reporter"),
        ("database", "analytics"),
        ("application_name", "metabase"),
        ("client_encoding", "UTF8"),
    ]);
    assert_eq!(
        parse(&bytes),
        Ok(identified("reporter", "analytics", Some("metabase")))
    );
}

#[test]
fn postgres_database_defaults_to_the_user() {
    let bytes = pg_startup(&[("user", "orders")]);
    assert_eq!(parse(&bytes), Ok(identified("orders", "orders", None)));
}

#[test]
fn postgres_protocol_3_2_is_read_too() {
    let mut bytes = pg_startup(&[("user", "u")]);
    bytes[7] = 2;
    assert_eq!(parse(&bytes), Ok(identified("u", "u", None)));
}

#[test]
fn ssl_gss_and_tls_starts_are_told_apart() {
    let ssl = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x2F];
    let gss = [0, 0, 0, 8, 0x04, 0xD2, 0x16, 0x30];
    assert_eq!(parse(&ssl), Ok(Start::PostgresSslRequest));
    assert_eq!(parse(&gss), Ok(Start::PostgresGssRequest));
    let hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    assert_eq!(parse(&hello), Ok(Start::TlsClientHello));
    let mut mysql_ssl = vec![32, 0, 0, 1];
    mysql_ssl.extend_from_slice(&(MYSQL_CLIENT_PROTOCOL_41 | MYSQL_CLIENT_SSL).to_le_bytes());
    mysql_ssl.extend_from_slice(&[0; 28]);
    assert_eq!(parse(&mysql_ssl), Ok(Start::MysqlSslRequest));
}

#[test]
fn mysql_response_gives_user_database_and_program_name() {
    let bytes = mysql_response("reporter", Some("sbtest"), Some("metabase"));
    assert_eq!(
        parse(&bytes),
        Ok(identified("reporter", "sbtest", Some("metabase")))
    );
    let bare = mysql_response("orders", None, None);
    assert_eq!(
        parse(&bare),
        Ok(Start::Identified(SqlIdentity {
            user: Some("orders".into()),
            ..Default::default()
        }))
    );
}

#[test]
fn a_cut_message_yields_what_it_holds_or_says_truncated() {
    let long = "x".repeat(600);
    let bytes = pg_startup(&[("user", "reporter"), ("application_name", &long)]);
    // The kernel hands up 512 bytes: the user is there, the name is not.
    assert_eq!(
        parse(&bytes[..512]),
        Ok(identified("reporter", "reporter", None))
    );
    let no_user = pg_startup(&[("options", &long), ("user", "u")]);
    assert_eq!(parse(&no_user[..512]), Err(Rejected::Truncated));
    assert_eq!(parse(&[0, 0, 0]), Err(Rejected::Truncated));
}

#[test]
fn bad_messages_are_rejected_by_reason() {
    // A PostgreSQL start without a user.
    assert_eq!(
        parse(&pg_startup(&[("database", "d")])),
        Err(Rejected::Malformed)
    );
    // Longer than PostgreSQL accepts.
    let mut huge = pg_startup(&[("user", "u")]);
    huge[..4].copy_from_slice(&20_000u32.to_be_bytes());
    assert_eq!(parse(&huge), Err(Rejected::Oversized));
    // A user name that is not UTF-8.
    assert_eq!(
        parse(&pg_startup_bytes(&[(b"user", b"\xff\xfe")])),
        Err(Rejected::Malformed)
    );
    // A query, an HTTP request: not starts.
    assert_eq!(parse(b"Q\0\0\0\x0eselect 1\0"), Err(Rejected::Unknown));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Rejected::Unknown));
    // MySQL with a user name that never ends.
    let mut cut = mysql_response("reporter", None, None);
    cut.truncate(4 + MYSQL_FIXED + 3);
    assert_eq!(parse(&cut), Err(Rejected::Truncated));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn mutated_starts_never_panic_and_never_grow(
        which in 0usize..3,
        flips in proptest::collection::vec((0usize..512, any::<u8>()), 1..8),
        cut in 0usize..600,
    ) {
        let mut bytes = match which {
            0 => pg_startup(&[("user", "reporter"), ("database", "analytics"), ("application_name", "m")]),
            1 => mysql_response("reporter", Some("sbtest"), Some("metabase")),
            _ => mysql_response("orders", None, None),
        };
        for (at, value) in flips {
            if let Some(byte) = bytes.get_mut(at) {
                *byte = value;
            }
        }
        bytes.truncate(cut);
        if let Ok(Start::Identified(who)) = parse(&bytes) {
            for field in [who.user, who.database, who.application].into_iter().flatten() {
                prop_assert!(field.len() <= bytes.len());
            }
        }
    }
}

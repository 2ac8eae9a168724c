//! The point of the project, with real databases: PostgreSQL (and then
//! MariaDB) serves an OLTP client (pgbench / sysbench at a fixed rate) and a
//! reporting client (bulk COPY / SELECT) over one 100 Mbit link. With the link's plain FIFO the bulk
//! backlog makes every OLTP query wait behind it; with the daemon (OLTP
//! guaranteed, bulk best effort, each on its endpoint) OLTP latency stays
//! low and bulk still gets most of the link. Both are measured in this
//! run, so the bounds are ratios, not absolute figures a busy machine
//! could miss.

use std::time::Duration;

use crate::support::{db::*, *};

const LINK: &str = "100mbit";
const OLTP_TPS: u32 = 200;
const SECONDS: u32 = 6;

#[test]
fn the_daemon_keeps_postgres_oltp_latency_low_under_a_bulk_export_and_bulk_keeps_the_link() {
    oltp_is_protected_and_bulk_keeps_the_link(Engine::Postgres);
}

#[test]
fn the_daemon_keeps_mariadb_oltp_latency_low_under_a_bulk_export_and_bulk_keeps_the_link() {
    oltp_is_protected_and_bulk_keeps_the_link(Engine::MariaDb);
}

fn oltp_is_protected_and_bulk_keeps_the_link(engine: Engine) {
    require_root();
    let net = DbNet::new();
    let (oltp, bulk) = (net.endpoint_a.as_str(), net.endpoint_b.as_str());
    let _postgres =
        (engine == Engine::Postgres).then(|| Postgres::start(&net.db, &[oltp, bulk], 5));
    let _mariadb = (engine == Engine::MariaDb).then(|| MariaDb::start(&net.db, oltp, 200_000));

    net.plain_link(LINK);
    let fifo = run_scenario(&net, engine, oltp, Some(bulk), OLTP_TPS, SECONDS);
    net.clear_link();

    let root = BpffsRoot::new();
    let dir = TempDir::new("pdbt");
    let port = engine.port();
    let claims = db_claim("orders", (oltp, port), "guaranteed", "htb", "20mbit", LINK)
        + &db_claim("reports", (bulk, port), "besteffort", "htb", "20mbit", LINK);
    let mut daemon = start_daemon_on_link(&net, root.as_str(), &dir.0, &claims, LINK);
    let shaped = run_scenario(&net, engine, oltp, Some(bulk), OLTP_TPS, SECONDS);
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));

    let (fifo_p99, shaped_p99) = (
        fifo.oltp.percentile_ms(0.99),
        shaped.oltp.percentile_ms(0.99),
    );
    eprintln!(
        "{engine:?} OLTP p99 under bulk: {fifo_p99:.1} ms with the link's FIFO, {shaped_p99:.1} ms \
         with the daemon; bulk {:.1} / {:.1} Mbit/s",
        fifo.bulk_mbit, shaped.bulk_mbit
    );
    assert!(
        shaped_p99 * 5.0 < fifo_p99,
        "OLTP p99 {shaped_p99:.1} ms with the daemon is not far below {fifo_p99:.1} ms without"
    );
    assert!(
        shaped.bulk_mbit >= 0.6 * fifo.bulk_mbit,
        "bulk got {:.1} Mbit/s with the daemon, {:.1} without: it must keep most of the link",
        shaped.bulk_mbit,
        fifo.bulk_mbit
    );
    assert!(
        shaped.oltp.tps() >= 0.9 * f64::from(OLTP_TPS),
        "OLTP achieved {:.0} tps of {OLTP_TPS}",
        shaped.oltp.tps()
    );
}

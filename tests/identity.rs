//! Who is talking: two workloads on ONE database endpoint, told apart by
//! the identity they state when they connect (SQL identity, no proxy) or
//! by their network (client selectors), with real PostgreSQL and MariaDB
//! clients and servers. The orders workload (OLTP at a fixed rate) must
//! keep its latency while the reporting export (bulk COPY / SELECT) shares
//! its endpoint; the kernel's class counters show whose bytes went where.

use std::time::Duration;

use pisa_daemon::kernel::pinned;

use crate::support::{db::*, *};

const LINK: &str = "100mbit";
const OLTP_TPS: u32 = 200;
const SECONDS: u32 = 6;

#[test]
fn postgres_roles_on_one_endpoint_are_told_apart_by_sql_identity() {
    protected_on_one_endpoint(Engine::Postgres, Selector::SqlUser);
}

#[test]
fn mariadb_users_on_one_endpoint_are_told_apart_by_sql_identity() {
    protected_on_one_endpoint(Engine::MariaDb, Selector::SqlUser);
}

#[test]
fn client_namespaces_on_one_endpoint_are_told_apart_by_client_cidr() {
    protected_on_one_endpoint(Engine::Postgres, Selector::ClientCidr);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Selector {
    /// `reports` selects `sql: {users: [reporter]}`; `orders` owns the endpoint.
    SqlUser,
    /// `orders` and `reports` select the OLTP and bulk clients' addresses.
    ClientCidr,
}

fn protected_on_one_endpoint(engine: Engine, selector: Selector) {
    require_root();
    let net = DbNet::new();
    let host = net.endpoint_a.as_str();
    let _postgres = (engine == Engine::Postgres).then(|| Postgres::start(&net.db, &[host], 5));
    let _mariadb = (engine == Engine::MariaDb).then(|| MariaDb::start(&net.db, host, 200_000));

    net.plain_link(LINK);
    let fifo = run_scenario(&net, engine, host, Some(host), OLTP_TPS, SECONDS);
    net.clear_link();

    let root = BpffsRoot::new();
    let dir = TempDir::new("pidt");
    let endpoint = (host, engine.port());
    let claims = match selector {
        Selector::SqlUser => {
            db_claim("orders", endpoint, "guaranteed", "htb", "20mbit", LINK)
                + &db_claim_selecting(
                    "reports",
                    endpoint,
                    "besteffort",
                    "htb",
                    "20mbit",
                    LINK,
                    &format!("sql: {{users: [{BULK_USER}]}}"),
                )
        }
        Selector::ClientCidr => {
            db_claim_selecting(
                "orders",
                endpoint,
                "guaranteed",
                "htb",
                "20mbit",
                LINK,
                &format!("clients: [{{cidr: {}/32}}]", net.oltp_ip),
            ) + &db_claim_selecting(
                "reports",
                endpoint,
                "besteffort",
                "htb",
                "20mbit",
                LINK,
                &format!("clients: [{{cidr: {}/32}}]", net.bulk_ip),
            )
        }
    };
    let mut daemon = start_daemon_on_link(&net, root.as_str(), &dir.0, &claims, LINK);
    let (orders, reports) = (
        class_of(&dir.0, "db/orders"),
        class_of(&dir.0, "db/reports"),
    );
    let before = pinned::class_stats(&root.layout(), [orders, reports].into_iter()).unwrap();
    let shaped = run_scenario(&net, engine, host, Some(host), OLTP_TPS, SECONDS);
    let after = pinned::class_stats(&root.layout(), [orders, reports].into_iter()).unwrap();
    if selector == Selector::SqlUser {
        eprintln!(
            "identity right after the run: {}",
            daemon_state(&dir.0)["identity"]
        );
        // The three export streams were read and tagged; the OLTP client's
        // connections were read too, and matched no SQL claim.
        wait_until(
            "the state file to count the identified connections",
            Duration::from_secs(15),
            || identity_count(&dir.0, "db/reports", "identified") >= 3,
        );
        assert!(
            identity_count(&dir.0, "db/reports", "other_identity") >= 1,
            "the orders connections were not seen: {}",
            daemon_state(&dir.0)["identity"]
        );
    }
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        !daemon.stderr_text().contains("pisa_kernel"),
        "kernel debug events are off unless --kernel-log debug:\n{}",
        daemon.stderr_text()
    );

    let bytes = |class: u32| after[&class].bytes - before[&class].bytes;
    let (orders_bytes, reports_bytes) = (bytes(orders), bytes(reports));
    let (fifo_p99, shaped_p99) = (
        fifo.oltp.percentile_ms(0.99),
        shaped.oltp.percentile_ms(0.99),
    );
    eprintln!(
        "{engine:?}/{selector:?} on one endpoint: OLTP p99 {fifo_p99:.1} ms with the link's \
         FIFO, {shaped_p99:.1} ms with the daemon; bulk {:.1} / {:.1} Mbit/s; class bytes \
         orders {orders_bytes}, reports {reports_bytes}",
        fifo.bulk_mbit, shaped.bulk_mbit
    );
    assert!(
        reports_bytes > 4 * orders_bytes,
        "the export's bytes must be in the reports class: orders {orders_bytes}, reports \
         {reports_bytes}"
    );
    assert!(
        orders_bytes > 0,
        "the OLTP responses must be in the orders class"
    );
    // Protection, in absolute terms and against the FIFO. A FIFO run whose
    // queue never filled (p99 under 50 ms: seen once in CI, 40 ms against
    // the usual 100-2,000 ms) shows no problem to be far below, so the
    // relative check needs a baseline that showed one.
    assert!(
        shaped_p99 <= SHAPED_P99_MAX_MS,
        "OLTP p99 {shaped_p99:.1} ms with the daemon (at most {SHAPED_P99_MAX_MS} ms)"
    );
    if fifo_p99 >= FIFO_CONGESTED_MS {
        assert!(
            shaped_p99 * 5.0 < fifo_p99,
            "OLTP p99 {shaped_p99:.1} ms with the daemon is not far below {fifo_p99:.1} ms without"
        );
    } else {
        eprintln!(
            "the FIFO baseline did not congest this run (p99 {fifo_p99:.1} ms): only the \
             absolute bound applies"
        );
    }
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

/// A TLS connection hides who it is: it stays in the endpoint's class and
/// is counted as TLS; the same role in clear is identified.
#[test]
fn a_tls_connection_stays_in_the_endpoint_class_and_is_counted_as_tls() {
    require_root();
    let net = DbNet::new();
    let host = net.endpoint_a.as_str();
    let _postgres = Postgres::start_with(&net.db, &[host], 1, true);
    let root = BpffsRoot::new();
    let dir = TempDir::new("pidl");
    let endpoint = (host, 5432);
    let claims = db_claim("orders", endpoint, "guaranteed", "htb", "50mbit", LINK)
        + &db_claim_selecting(
            "reports",
            endpoint,
            "besteffort",
            "htb",
            "20mbit",
            LINK,
            &format!("sql: {{users: [{BULK_USER}]}}"),
        );
    // With the kernel's debug events on: each start handed up is logged.
    let mut daemon = start_daemon_on_link_with(
        &net,
        root.as_str(),
        &dir.0,
        &claims,
        LINK,
        &["--kernel-log", "debug"],
    );
    let (orders, reports) = (
        class_of(&dir.0, "db/orders"),
        class_of(&dir.0, "db/reports"),
    );
    let copy = |sslmode: &str| {
        let stats = |c| pinned::class_stats(&root.layout(), [c].into_iter()).unwrap()[&c].bytes;
        let (o, r) = (stats(orders), stats(reports));
        psql_copy(&net.bulk, host, sslmode);
        (stats(orders) - o, stats(reports) - r)
    };
    let (tls_orders, tls_reports) = copy("require");
    wait_until(
        "the TLS start to be counted",
        Duration::from_secs(15),
        || identity_count(&dir.0, "db/reports", "tls") >= 1,
    );
    let (clear_orders, clear_reports) = copy("disable");
    wait_until(
        "the clear start to be identified",
        Duration::from_secs(15),
        || identity_count(&dir.0, "db/reports", "identified") >= 1,
    );
    eprintln!(
        "TLS copy: orders {tls_orders} B, reports {tls_reports} B; clear copy: orders \
         {clear_orders} B, reports {clear_reports} B; identity {}",
        daemon_state(&dir.0)["identity"]
    );
    let handed_up = format!("sql identity: start handed up {}:", net.bulk_ip);
    wait_for_log(&mut daemon, &handed_up, Duration::from_secs(10));
    let logged = daemon.stderr_text();
    let line = logged
        .lines()
        .find(|l| l.contains(&handed_up))
        .unwrap_or_default();
    assert!(
        line.contains("DEBUG pisa_kernel") && line.contains(&format!("-> {host}:5432")),
        "the kernel's event, as a log line: {line}"
    );
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(
        tls_orders > 1_000_000 && tls_reports < tls_orders / 100,
        "the TLS copy must stay in the endpoint's class (orders)"
    );
    assert!(
        clear_reports > 1_000_000 && clear_orders < clear_reports / 10,
        "the identified copy must be in the reports class"
    );
}

/// OLTP p99 with the daemon: the runs recorded give 0.9-8.4 ms.
const SHAPED_P99_MAX_MS: f64 = 20.0;
/// A FIFO baseline at or above this showed the problem the daemon solves.
const FIFO_CONGESTED_MS: f64 = 50.0;

/// One COPY of pgbench's accounts table as the bulk user, with `sslmode`.
fn psql_copy(ns: &Netns, host: &str, sslmode: &str) {
    psql_as(
        ns,
        host,
        BULK_USER,
        sslmode,
        "COPY pgbench_accounts TO STDOUT",
    );
}

/// A restarted daemon takes over SQL identity's tags (their connections'
/// starts are long gone): a tagged export stays in its class across a
/// SIGKILL and a restart.
#[test]
fn identified_connections_stay_in_their_class_across_a_restart() {
    require_root();
    let net = DbNet::new();
    let host = net.endpoint_a.as_str();
    let _postgres = Postgres::start(&net.db, &[host], 5);
    let root = BpffsRoot::new();
    let dir = TempDir::new("pidr");
    let endpoint = (host, 5432);
    let claims = db_claim("orders", endpoint, "guaranteed", "htb", "50mbit", LINK)
        + &db_claim_selecting(
            "reports",
            endpoint,
            "besteffort",
            "htb",
            "20mbit",
            "20mbit",
            &format!("sql: {{users: [{BULK_USER}]}}"),
        );
    let mut daemon = start_daemon_on_link(&net, root.as_str(), &dir.0, &claims, LINK);
    let (orders, reports) = (
        class_of(&dir.0, "db/orders"),
        class_of(&dir.0, "db/reports"),
    );
    let _export = bulk_copies(&net.bulk, host, 1);
    wait_until(
        "the export to be identified",
        Duration::from_secs(15),
        || identity_count(&dir.0, "db/reports", "identified") >= 1,
    );
    daemon.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let mut daemon = start_daemon_on_link(&net, root.as_str(), &dir.0, &claims, LINK);
    let bytes = || pinned::class_stats(&root.layout(), [orders, reports].into_iter()).unwrap();
    let before = bytes();
    std::thread::sleep(Duration::from_secs(3));
    let after = bytes();
    daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    let grew = |class: u32| after[&class].bytes - before[&class].bytes;
    eprintln!(
        "after the restart: reports {} B, orders {} B in 3 s",
        grew(reports),
        grew(orders)
    );
    assert!(
        grew(reports) > 3_000_000,
        "the export left its class after the restart"
    );
    assert!(
        grew(orders) < grew(reports) / 20,
        "the export fell to the endpoint's class after the restart"
    );
}

//! Real databases for the protection tests and benchmarks: PostgreSQL or
//! MariaDB started in its own namespace (data in a temp dir, listening only
//! on the namespace's addresses), an OLTP client (pgbench -S, or sysbench
//! oltp_point_select, at a fixed rate) and a reporting client (a large
//! table copied out in a loop), both behind one shared link.
//!
//! ```text
//!  [oltp] 10.N.1.2 ─┐                                   ┌─ 10.N.2.2 (endpoint A)
//!                   ├─ bridge 10.N.1.1 (host) 10.N.2.1 ─┤  [db]  postgres :5432
//!  [bulk] 10.N.1.3 ─┘   ▲ the link: responses leave     └─ 10.N.2.3 (endpoint B)
//!                         here, where the shaping is
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    daemon::spawn_daemon,
    host::{read_u64, require_tool, sh, sh_quiet, unique, unique_octet, TempDir},
    net::Netns,
    process::ChildGuard,
    wait::wait_until,
};

/// Runs one statement through psql in `ns`, as `user` on `host`'s
/// `postgres` database with `sslmode`; its output is discarded.
pub fn psql_as(ns: &Netns, host: &str, user: &str, sslmode: &str, sql: &str) {
    let conninfo = format!("host={host} user={user} dbname=postgres sslmode={sslmode}");
    let psql = pg_bin("psql");
    ns.exec(&[
        psql.to_str().expect("utf-8"),
        "-X",
        "-q",
        "-o",
        "/dev/null",
        "-c",
        sql,
        &conninfo,
    ]);
}

/// The PostgreSQL server binaries (Debian installs them per major version).
pub fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let bin = versions
        .last()
        .map(|v| v.join("bin").join(tool))
        .filter(|p| p.exists());
    bin.unwrap_or_else(|| {
        panic!("PostgreSQL's `{tool}` is not installed; run `cargo xtask setup` (it installs postgresql)")
    })
}

/// The database user the OLTP workload connects as (PostgreSQL role,
/// MariaDB user), and the one the bulk export connects as.
pub const OLTP_USER: &str = "orders";
pub const BULK_USER: &str = "reporter";

/// The database topology: the bridge is the shared link.
pub struct DbNet {
    pub db: Netns,
    pub oltp: Netns,
    pub bulk: Netns,
    /// Host bridge both clients hang off; its egress is the link.
    pub link: String,
    /// Host-side bridge port toward the bulk client (its bytes are the
    /// bulk client's goodput plus headers).
    pub bulk_port: String,
    db_veth: String,
    pub endpoint_a: String,
    pub endpoint_b: String,
    pub oltp_ip: String,
    pub bulk_ip: String,
    previous_forwarding: String,
}

impl DbNet {
    pub fn new() -> Self {
        let octet = unique_octet();
        let previous_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .expect("reading ip_forward")
            .trim()
            .to_owned();
        sh("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        let link = unique("pbr");
        sh("ip", &["link", "add", &link, "type", "bridge"]);
        // A NIC's transmit queue: HTB's default leaf takes its length.
        sh("ip", &["link", "set", &link, "txqueuelen", "1000"]);
        sh(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{link}.disable_ipv6=1")],
        );
        sh(
            "ip",
            &["addr", "add", &format!("10.{octet}.1.1/24"), "dev", &link],
        );
        sh("ip", &["link", "set", &link, "up"]);
        let net = Self {
            db: Netns::new(),
            oltp: Netns::new(),
            bulk: Netns::new(),
            link,
            bulk_port: unique("pbb"),
            db_veth: unique("pbd"),
            endpoint_a: format!("10.{octet}.2.2"),
            endpoint_b: format!("10.{octet}.2.3"),
            oltp_ip: format!("10.{octet}.1.2"),
            bulk_ip: format!("10.{octet}.1.3"),
            previous_forwarding,
        };
        let gateway = format!("10.{octet}.1.1");
        net.client_port(&net.oltp, &unique("pbo"), &net.oltp_ip, &gateway);
        net.client_port(&net.bulk, &net.bulk_port, &net.bulk_ip, &gateway);
        let peer = unique("pbq");
        sh(
            "ip",
            &[
                "link",
                "add",
                &net.db_veth,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &net.db.name,
            ],
        );
        sh(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", net.db_veth),
            ],
        );
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.{octet}.2.1/24"),
                "dev",
                &net.db_veth,
            ],
        );
        sh("ip", &["link", "set", &net.db_veth, "up"]);
        for ip in [&net.endpoint_a, &net.endpoint_b] {
            net.db
                .exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &peer]);
        }
        net.db.exec(&["ip", "link", "set", &peer, "up"]);
        net.db.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{octet}.2.1"),
        ]);
        net
    }

    /// A client namespace on a bridge port.
    fn client_port(&self, ns: &Netns, port: &str, ip: &str, gateway: &str) {
        let peer = unique("pbp");
        sh(
            "ip",
            &[
                "link", "add", port, "type", "veth", "peer", "name", &peer, "netns", &ns.name,
            ],
        );
        sh(
            "sysctl",
            &["-qw", &format!("net.ipv6.conf.{port}.disable_ipv6=1")],
        );
        sh("ip", &["link", "set", port, "master", &self.link, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &peer]);
        ns.exec(&["ip", "link", "set", &peer, "up"]);
        ns.exec(&["ip", "route", "add", "default", "via", gateway]);
    }

    /// Bytes sent toward the bulk client so far.
    pub fn bulk_bytes(&self) -> u64 {
        read_u64(&format!(
            "/sys/class/net/{}/statistics/tx_bytes",
            self.bulk_port
        ))
    }

    /// Makes the link a plain `rate` link with the kernel's FIFO (HTB's
    /// default leaf, txqueuelen packets): a NIC of that speed, no QoS.
    pub fn plain_link(&self, rate: &str) {
        self.clear_link();
        sh(
            "tc",
            &[
                "qdisc", "add", "dev", &self.link, "root", "handle", "1:", "htb", "default", "1",
            ],
        );
        sh(
            "tc",
            &[
                "class", "add", "dev", &self.link, "parent", "1:", "classid", "1:1", "htb", "rate",
                rate,
            ],
        );
    }

    /// Removes whatever root qdisc the link has.
    pub fn clear_link(&self) {
        sh_quiet("tc", &["qdisc", "del", "dev", &self.link, "root"]);
    }
}

impl Drop for DbNet {
    fn drop(&mut self) {
        sh_quiet("ip", &["link", "del", &self.db_veth]);
        sh_quiet("ip", &["link", "del", &self.bulk_port]);
        sh_quiet("ip", &["link", "del", &self.link]);
        sh_quiet(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv4.ip_forward={}", self.previous_forwarding),
            ],
        );
    }
}

/// A PostgreSQL server in `ns`, its data in a temp dir; stopped (fast
/// shutdown) and removed on drop.
pub struct Postgres {
    server: ChildGuard,
    /// Data and socket directory, removed after the server stops.
    _dir: TempDir,
}

impl Postgres {
    /// initdb, start on `listen` (the namespace's addresses only), wait
    /// until it accepts connections, then load pgbench's tables at `scale`.
    pub fn start(ns: &Netns, listen: &[&str], scale: u32) -> Self {
        Self::start_with(ns, listen, scale, false)
    }

    /// As `start`; with `tls`, the server also offers TLS (a self-signed
    /// certificate made here), so clients choose with `sslmode`.
    pub fn start_with(ns: &Netns, listen: &[&str], scale: u32, tls: bool) -> Self {
        require_tool("setpriv");
        let dir = TempDir::new("ppg");
        sh(
            "chown",
            &["postgres:postgres", dir.0.to_str().expect("utf-8")],
        );
        let data = dir.0.join("data");
        let as_postgres = [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ];
        let initdb = pg_bin("initdb");
        let mut args: Vec<&str> = as_postgres.to_vec();
        args.extend([
            initdb.to_str().expect("utf-8"),
            "-D",
            data.to_str().expect("utf-8"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        sh(args[0], &args[1..]);
        // Trust the test subnets; nothing listens beyond the namespace.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules.push_str("host all all 10.0.0.0/8 trust\n");
        std::fs::write(&hba, rules).expect("writing pg_hba.conf");
        let mut tls_settings = Vec::new();
        if tls {
            require_tool("openssl");
            let (cert, key) = (data.join("server.crt"), data.join("server.key"));
            let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
            sh(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=pisa-test-db",
                    "-keyout",
                    key,
                    "-out",
                    cert,
                ],
            );
            sh("chown", &["postgres:postgres", cert, key]);
            sh("chmod", &["600", key]);
            tls_settings = vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={cert}"),
                format!("ssl_key_file={key}"),
            ];
        }
        let postgres = pg_bin("postgres");
        let listen = listen.join(",");
        let settings = [
            format!("listen_addresses={listen}"),
            "port=5432".into(),
            format!("unix_socket_directories={}", dir.0.display()),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "max_connections=40".into(),
            "shared_buffers=64MB".into(),
        ]
        .into_iter()
        .chain(tls_settings)
        .collect::<Vec<String>>();
        let (postgres, data_dir) = (postgres.display().to_string(), data.display().to_string());
        let mut args: Vec<&str> = as_postgres.to_vec();
        args.extend([postgres.as_str(), "-D", data_dir.as_str()]);
        for setting in &settings {
            args.extend(["-c", setting.as_str()]);
        }
        let mut server = ns.spawn_as("postgres", &args);
        let host = listen.split(',').next().unwrap_or_default().to_owned();
        let isready = pg_bin("pg_isready");
        wait_until(
            "PostgreSQL to accept connections",
            Duration::from_secs(30),
            || {
                server.assert_running();
                Command::new("ip")
                    .args(["netns", "exec", &ns.name])
                    .arg(&isready)
                    .args(["-q", "-h", &host, "-p", "5432"])
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        let pg = Self { server, _dir: dir };
        let scale = scale.to_string();
        ns.exec(&[
            pg_bin("pgbench").to_str().expect("utf-8"),
            "-i",
            "-q",
            "-s",
            &scale,
            "-h",
            &host,
            "-U",
            "postgres",
            "postgres",
        ]);
        // The two workloads connect as their own roles: SQL identity tells
        // them apart on one endpoint.
        ns.exec(&[
            pg_bin("psql").to_str().expect("utf-8"),
            "-X",
            "-q",
            "-h",
            &host,
            "-U",
            "postgres",
            "-c",
            "CREATE ROLE orders LOGIN SUPERUSER; CREATE ROLE reporter LOGIN SUPERUSER;",
            "postgres",
        ]);
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT) so backends go too.
        self.server.stop(libc::SIGINT, SHUTDOWN);
    }
}

/// Latencies of one OLTP run.
pub struct Oltp {
    /// Every transaction's latency (µs), from its scheduled start, so that
    /// time spent waiting behind a queue counts.
    pub latencies_us: Vec<u64>,
    pub seconds: f64,
}

impl Oltp {
    /// The `q` quantile (0..=1) in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index] as f64 / 1000.0
    }

    pub fn tps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }
}

/// `pgbench -S` (select-only) from `ns` against `host` at a fixed `rate`
/// (transactions/s) for `seconds`, every transaction logged.
pub fn pgbench_select(ns: &Netns, host: &str, rate: u32, clients: u32, seconds: u32) -> Oltp {
    let logs = TempDir::new("ppgl");
    let prefix = logs.0.join("oltp");
    let (rate, clients, secs) = (rate.to_string(), clients.to_string(), seconds.to_string());
    let prefix_arg = format!("--log-prefix={}", prefix.display());
    ns.exec(&[
        pg_bin("pgbench").to_str().expect("utf-8"),
        "-S",
        "-n",
        "-R",
        &rate,
        "-c",
        &clients,
        "-j",
        "2",
        "-T",
        &secs,
        "-l",
        &prefix_arg,
        "-h",
        host,
        "-U",
        OLTP_USER,
        "postgres",
    ]);
    let mut latencies_us = Vec::new();
    for entry in std::fs::read_dir(&logs.0).expect("pgbench logs").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("reading a pgbench log");
        // client_id transaction_no time script_no time_epoch time_us [lag]
        latencies_us.extend(
            text.lines()
                .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    assert!(!latencies_us.is_empty(), "pgbench logged no transactions");
    Oltp {
        latencies_us,
        seconds: f64::from(seconds),
    }
}

/// `streams` reporting connections from `ns`, each copying pgbench's
/// accounts table out of `host` again and again until dropped.
pub fn bulk_copies(ns: &Netns, host: &str, streams: usize) -> Vec<ChildGuard> {
    let psql = pg_bin("psql");
    let mut args = vec![
        psql.to_str().expect("utf-8"),
        "-X",
        "-q",
        "-h",
        host,
        "-U",
        BULK_USER,
        "-o",
        "/dev/null",
    ];
    // One process for the whole loop, so dropping the guard stops it.
    for _ in 0..1000 {
        args.extend(["-c", "COPY pgbench_accounts TO STDOUT"]);
    }
    args.push("postgres");
    let what = format!("bulk COPY from {host}");
    (0..streams).map(|_| ns.spawn_as(&what, &args)).collect()
}

/// A MariaDB server in `ns`, its data in a temp dir, listening on the
/// namespace's addresses only; stopped and removed on drop. User `bench`
/// (no password) owns database `sbtest`, where sysbench's table lives,
/// and so do users `orders` and `reporter`.
pub struct MariaDb {
    server: ChildGuard,
    _dir: TempDir,
}

impl MariaDb {
    /// Installs a data directory, starts the server, creates the user and
    /// loads sysbench's table with `rows` rows.
    pub fn start(ns: &Netns, host: &str, rows: u32) -> Self {
        require_tool("mariadbd");
        require_tool("sysbench");
        let dir = TempDir::new("pmdb");
        let path = dir.0.to_str().expect("utf-8").to_owned();
        sh("chown", &["mysql:mysql", &path]);
        sh(
            "mariadb-install-db",
            &[
                "--no-defaults",
                &format!("--datadir={path}/data"),
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
        );
        let socket = format!("{path}/sock");
        let options = [
            format!("--datadir={path}/data"),
            format!("--socket={socket}"),
            format!("--pid-file={path}/pid"),
            format!("--log-error={path}/error.log"),
            format!("--tmpdir={path}"),
        ];
        let mut args = vec![
            "setpriv",
            "--reuid=mysql",
            "--regid=mysql",
            "--init-groups",
            "--",
            "mariadbd",
            "--no-defaults",
            "--port=3306",
            // Inside the namespace: its own addresses only.
            "--bind-address=0.0.0.0",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--innodb-flush-log-at-trx-commit=0",
            "--max-connections=40",
        ];
        args.extend(options.iter().map(String::as_str));
        let mut server = ns.spawn_as("mariadbd", &args);
        wait_until(
            "MariaDB to accept connections",
            Duration::from_secs(30),
            || {
                server.assert_running();
                Command::new("mariadb-admin")
                    .args(["-S", &socket, "ping"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        );
        sh(
            "mariadb",
            &[
                "-S",
                &socket,
                "-u",
                "root",
                "-e",
                "CREATE DATABASE sbtest; CREATE USER 'orders'@'%'; GRANT ALL ON sbtest.* TO 'orders'@'%'; \
                 CREATE USER 'reporter'@'%'; GRANT ALL ON sbtest.* TO 'reporter'@'%';",
            ],
        );
        sysbench(
            ns,
            host,
            &[format!("--table-size={rows}"), "prepare".into()],
        );
        Self { server, _dir: dir }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.server.stop(libc::SIGTERM, SHUTDOWN);
    }
}

/// Runs `sysbench oltp_point_select` from `ns` on the `bench` user's table
/// at `host`, with `extra` arguments; its output.
fn sysbench(ns: &Netns, host: &str, extra: &[String]) -> String {
    let common = [
        "oltp_point_select".to_owned(),
        "--db-driver=mysql".into(),
        format!("--mysql-host={host}"),
        format!("--mysql-user={OLTP_USER}"),
        "--mysql-db=sbtest".into(),
        "--tables=1".into(),
    ];
    let mut args = vec!["sysbench"];
    args.extend(common.iter().chain(extra).map(String::as_str));
    ns.exec(&args)
}

/// `sysbench oltp_point_select` from `ns` against `host` at a fixed `rate`
/// (events/s); latencies from its histogram (buckets about 1.5% wide).
pub fn sysbench_point_select(
    ns: &Netns,
    host: &str,
    rate: u32,
    threads: u32,
    seconds: u32,
) -> Oltp {
    let out = sysbench(
        ns,
        host,
        &[
            format!("--rate={rate}"),
            format!("--threads={threads}"),
            format!("--time={seconds}"),
            "--histogram=on".into(),
            "run".into(),
        ],
    );
    let mut latencies_us = Vec::new();
    for line in out.lines() {
        // "       0.132 |********************                     4"
        let Some((value, rest)) = line.split_once('|') else {
            continue;
        };
        let (Ok(ms), Some(Ok(count))) = (
            value.trim().parse::<f64>(),
            rest.split_whitespace().last().map(str::parse::<usize>),
        ) else {
            continue;
        };
        latencies_us.extend(std::iter::repeat_n((ms * 1000.0) as u64, count));
    }
    assert!(
        !latencies_us.is_empty(),
        "sysbench printed no histogram: {out}"
    );
    Oltp {
        latencies_us,
        seconds: f64::from(seconds),
    }
}

/// `streams` reporting connections from `ns`, each selecting sysbench's
/// whole table from `host` again and again until dropped.
pub fn mariadb_bulk(ns: &Netns, host: &str, streams: usize) -> Vec<ChildGuard> {
    let query = "SELECT * FROM sbtest1;".repeat(1000);
    let args = [
        "mariadb", "--batch", "--quick", "-h", host, "-u", BULK_USER, "sbtest", "-e", &query,
    ];
    let what = format!("bulk SELECT from {host}");
    (0..streams).map(|_| ns.spawn_as(&what, &args)).collect()
}

/// Which database a scenario talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    MariaDb,
}

impl Engine {
    pub fn port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::MariaDb => 3306,
        }
    }
}

/// How long a database may take to shut down before it is killed.
const SHUTDOWN: Duration = Duration::from_secs(10);

/// One scenario's outcome: OLTP latencies and the bulk client's rate.
pub struct Outcome {
    pub oltp: Oltp,
    /// Wire Mbit/s toward the bulk client during the OLTP run (0 without).
    pub bulk_mbit: f64,
}

/// Runs OLTP against `oltp_host` for `seconds` at `rate` tps, with (or
/// without) three bulk COPY streams from `bulk_host` running meanwhile.
pub fn run_scenario(
    net: &DbNet,
    engine: Engine,
    oltp_host: &str,
    bulk_host: Option<&str>,
    rate: u32,
    seconds: u32,
) -> Outcome {
    let bulk = bulk_host.map(|host| match engine {
        Engine::Postgres => bulk_copies(&net.bulk, host, 3),
        Engine::MariaDb => mariadb_bulk(&net.bulk, host, 3),
    });
    if bulk.is_some() {
        let from = net.bulk_bytes();
        wait_until("the bulk streams to flow", Duration::from_secs(20), || {
            net.bulk_bytes().saturating_sub(from) > 2_000_000
        });
    }
    let (bytes_before, started) = (net.bulk_bytes(), Instant::now());
    let oltp = match engine {
        Engine::Postgres => pgbench_select(&net.oltp, oltp_host, rate, 4, seconds),
        Engine::MariaDb => sysbench_point_select(&net.oltp, oltp_host, rate, 4, seconds),
    };
    let bulk_mbit = match bulk {
        Some(mut streams) => {
            let mbit = (net.bulk_bytes() - bytes_before) as f64 * 8.0
                / started.elapsed().as_secs_f64()
                / 1e6;
            for stream in &mut streams {
                stream.assert_running();
            }
            mbit
        }
        None => 0.0,
    };
    Outcome { oltp, bulk_mbit }
}

/// A QoSClaim on one database endpoint (`host`, `port`).
pub fn db_claim(
    name: &str,
    endpoint: (&str, u16),
    priority: &str,
    mode: &str,
    rate: &str,
    ceil: &str,
) -> String {
    db_claim_selecting(name, endpoint, priority, mode, rate, ceil, "")
}

/// A QoSClaim on one database endpoint with `selectors`: YAML lines under
/// `trafficQoS`, e.g. `sql: {users: [reporter]}`.
pub fn db_claim_selecting(
    name: &str,
    (host, port): (&str, u16),
    priority: &str,
    mode: &str,
    rate: &str,
    ceil: &str,
    selectors: &str,
) -> String {
    let selectors = if selectors.is_empty() {
        String::new()
    } else {
        format!("\n    {selectors}")
    };
    format!(
        "apiVersion: core.database-mesh.io/v1alpha1\nkind: QoSClaim\n\
         metadata: {{name: {name}, namespace: db}}\nspec:\n  trafficQoS:\n    name: {name}\n    \
         qos_group: {{rate: {rate}, ceil: {ceil}}}\n    priority: {priority}\n    mode: {mode}\n    \
         endpoints: [{{host: {host}, port: {port}}}]{selectors}\n---\n"
    )
}

/// The daemon's published state (`--state-file` in `dir`).
pub fn daemon_state(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("state.json")).expect("reading the state file");
    serde_json::from_str(&text).expect("the state file is JSON")
}

/// The class id the state file gives `claim` (`namespace/name`).
pub fn class_of(dir: &Path, claim: &str) -> u32 {
    daemon_state(dir)["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .find(|c| c["claim"] == claim)
        .and_then(|c| c["class_id"].as_u64())
        .unwrap_or_else(|| panic!("no class for {claim} in the state file")) as u32
}

/// SQL identity's count of `outcome` for `claim` in the state file (0 if absent).
pub fn identity_count(dir: &Path, claim: &str, outcome: &str) -> u64 {
    daemon_state(dir)["identity"]["claims"][claim][outcome]
        .as_u64()
        .unwrap_or(0)
}

/// Runs the daemon as a user would: a claims file, the link as its
/// interface, the link's rate; waits until every claim is applied (from the
/// state file it publishes).
pub fn start_daemon_on_link(
    net: &DbNet,
    bpffs: &str,
    dir: &Path,
    claims: &str,
    link_rate: &str,
) -> ChildGuard {
    start_daemon_on_link_with(net, bpffs, dir, claims, link_rate, &[])
}

/// As `start_daemon_on_link`, with more arguments for `run`.
pub fn start_daemon_on_link_with(
    net: &DbNet,
    bpffs: &str,
    dir: &Path,
    claims: &str,
    link_rate: &str,
    extra: &[&str],
) -> ChildGuard {
    let config = dir.join("claims.yaml");
    std::fs::write(&config, claims).expect("writing claims");
    let state = dir.join("state.json");
    let _ = std::fs::remove_file(&state);
    let mut args = vec![
        "run",
        "--config",
        config.to_str().expect("utf-8"),
        "--iface",
        &net.link,
        "--link-rate",
        link_rate,
        "--bpffs",
        bpffs,
        "--state-file",
        state.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let mut guard = spawn_daemon(&args);
    let expected = claims.matches("kind: QoSClaim").count();
    wait_until("every claim applied", Duration::from_secs(30), || {
        guard.assert_running();
        let Ok(text) = std::fs::read_to_string(&state) else {
            return false;
        };
        let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let claims = state["claims"].as_array().cloned().unwrap_or_default();
        claims.len() == expected && claims.iter().all(|c| c["phase"] == "Applied")
    });
    guard
}

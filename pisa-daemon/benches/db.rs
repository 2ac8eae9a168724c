//! `cargo xtask bench db`: does the daemon protect a database workload?
//!
//! PostgreSQL in its own namespace serves an OLTP client (`pgbench -S` at a
//! fixed rate, every transaction's latency logged from its scheduled
//! start) and a reporting client (three `COPY pgbench_accounts TO STDOUT`
//! loops) behind one link of `--link-rate` (default 100 Mbit/s). Every
//! scenario runs on the same topology in this one run:
//!
//! 1. idle: OLTP alone on the plain link;
//! 2. no QoS: OLTP + bulk through the link's own FIFO;
//! 3. the CNI bandwidth plugin's way: the bulk client's interface limited
//!    by TBF at the bulk rate;
//! 4. the daemon: OLTP `guaranteed`, bulk `besteffort`, both rate 20mbit
//!    and ceil = link, each on its own endpoint (the release binary, a
//!    claims file);
//! 5. the daemon with the bulk claim in `police` mode;
//! 6. to 9. OLTP and bulk on the SAME endpoint: no QoS; the daemon with one
//!    claim (it cannot tell them apart; the class's own short queue bounds
//!    the wait); the daemon telling them apart by SQL identity (`reports`
//!    selects user `reporter`, `orders` owns the endpoint); and by client
//!    network (`clients.cidr`);
//! 10. to 14. MariaDB (`sysbench oltp_point_select`, bulk `SELECT *`
//!     loops): idle, no QoS, the daemon; on the same endpoint, no QoS and
//!     SQL identity.
//!
//! Then SQL identity's own figures: from a connection's start message to
//! its tag in the kernel (median, p99), and the bytes of each connection
//! that passed in the endpoint's class before the tag.
//!
//! Prints a Markdown table and writes the latency CDFs to
//! `docs/db-latency.svg`. Flags: `--link-rate RATE`, `--seconds N` (a run,
//! default 10), `--runs N` (default 3; the table shows medians and the p99
//! range), `--demo` (three scenarios, one short run).

// The integration tests' fixtures; a bench uses only some of them.
#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use plotters::prelude::*;
use support::{db::*, *};

const OLTP_TPS: u32 = 200;
const BULK_RATE: &str = "20mbit";

struct Options {
    link_rate: String,
    seconds: u32,
    runs: usize,
    demo: bool,
}

fn options() -> Options {
    let mut options = Options {
        link_rate: "100mbit".into(),
        seconds: 10,
        runs: 3,
        demo: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--link-rate" => options.link_rate = args.next().expect("--link-rate RATE"),
            "--seconds" => {
                options.seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--runs" => {
                options.runs = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .expect("--runs N (at least 1)")
            }
            "--demo" => {
                options.demo = true;
                options.seconds = 8;
                options.runs = 1;
            }
            // cargo bench passes --bench.
            _ => {}
        }
    }
    options
}

/// What runs on the link in a scenario.
enum Setup {
    Plain,
    CniTbf,
    Daemon(String),
}

struct Scenario {
    name: &'static str,
    engine: Engine,
    setup: Setup,
    bulk: bool,
    same_endpoint: bool,
}

/// A scenario's runs (alternating with the other scenarios' runs).
struct Row {
    name: &'static str,
    runs: Vec<Outcome>,
}

impl Row {
    /// The median over the runs of `stat`.
    fn median(&self, stat: impl Fn(&Outcome) -> f64) -> f64 {
        let mut values: Vec<f64> = self.runs.iter().map(stat).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    /// The smallest and largest p99 over the runs.
    fn p99_range(&self) -> (f64, f64) {
        self.runs
            .iter()
            .map(|o| o.oltp.percentile_ms(0.99))
            .fold((f64::MAX, 0.0f64), |(lo, hi), p| (lo.min(p), hi.max(p)))
    }
}

fn claims(net: &DbNet, engine: Engine, link: &str, bulk_mode: &str) -> String {
    let a = (net.endpoint_a.as_str(), engine.port());
    let b = (net.endpoint_b.as_str(), engine.port());
    db_claim("orders", a, "guaranteed", "htb", "20mbit", link)
        + &db_claim("reports", b, "besteffort", bulk_mode, BULK_RATE, link)
}

/// Two claims on ONE endpoint: `orders` owns it, `reports` takes the
/// connections whose start says user `reporter` (or, with `by_client`,
/// the bulk client's address).
fn same_endpoint_claims(net: &DbNet, engine: Engine, link: &str, by_client: bool) -> String {
    let a = (net.endpoint_a.as_str(), engine.port());
    let reports = if by_client {
        format!("clients: [{{cidr: {}/32}}]", net.bulk_ip)
    } else {
        format!("sql: {{users: [{BULK_USER}]}}")
    };
    db_claim("orders", a, "guaranteed", "htb", "20mbit", link)
        + &db_claim_selecting("reports", a, "besteffort", "htb", BULK_RATE, link, &reports)
}

fn scenarios(net: &DbNet, options: &Options) -> Vec<Scenario> {
    use Engine::{MariaDb, Postgres};
    let link = options.link_rate.as_str();
    let scenario = |name, engine, setup, bulk, same_endpoint| Scenario {
        name,
        engine,
        setup,
        bulk,
        same_endpoint,
    };
    let daemon = |engine| Setup::Daemon(claims(net, engine, link, "htb"));
    let idle = "idle: OLTP alone";
    let fifo = "no QoS: OLTP + bulk, the link's FIFO";
    let shaped = "pisa-daemon: OLTP guaranteed, bulk besteffort";
    let sql = |engine| Setup::Daemon(same_endpoint_claims(net, engine, link, false));
    let same_fifo = "same endpoint, no QoS";
    let same_sql = "same endpoint, pisa-daemon: SQL identity tells them apart";
    if options.demo {
        return vec![
            scenario(idle, Postgres, Setup::Plain, false, false),
            scenario(fifo, Postgres, Setup::Plain, true, false),
            scenario(shaped, Postgres, daemon(Postgres), true, false),
            scenario(same_fifo, Postgres, Setup::Plain, true, true),
            scenario(same_sql, Postgres, sql(Postgres), true, true),
        ];
    }
    let by_client = Setup::Daemon(same_endpoint_claims(net, Postgres, link, true));
    let police = Setup::Daemon(claims(net, Postgres, link, "police"));
    let a = (net.endpoint_a.as_str(), Postgres.port());
    let one_claim = Setup::Daemon(db_claim("shared", a, "burstable", "htb", "20mbit", link));
    let cni = "CNI bandwidth plugin: TBF on the bulk Pod";
    vec![
        scenario(idle, Postgres, Setup::Plain, false, false),
        scenario(fifo, Postgres, Setup::Plain, true, false),
        scenario(cni, Postgres, Setup::CniTbf, true, false),
        scenario(shaped, Postgres, daemon(Postgres), true, false),
        scenario(
            "pisa-daemon: bulk in police mode",
            Postgres,
            police,
            true,
            false,
        ),
        scenario(same_fifo, Postgres, Setup::Plain, true, true),
        scenario(
            "same endpoint, pisa-daemon (one claim)",
            Postgres,
            one_claim,
            true,
            true,
        ),
        scenario(same_sql, Postgres, sql(Postgres), true, true),
        scenario(
            "same endpoint, pisa-daemon: client networks tell them apart",
            Postgres,
            by_client,
            true,
            true,
        ),
        scenario(
            "MariaDB idle: OLTP alone",
            MariaDb,
            Setup::Plain,
            false,
            false,
        ),
        scenario(
            "MariaDB no QoS: the link's FIFO",
            MariaDb,
            Setup::Plain,
            true,
            false,
        ),
        scenario("MariaDB pisa-daemon", MariaDb, daemon(MariaDb), true, false),
        scenario(
            "MariaDB same endpoint, no QoS",
            MariaDb,
            Setup::Plain,
            true,
            true,
        ),
        scenario(
            "MariaDB same endpoint, pisa-daemon: SQL identity",
            MariaDb,
            sql(MariaDb),
            true,
            true,
        ),
    ]
}

fn run(net: &DbNet, scenario: &Scenario, options: &Options) -> Outcome {
    let bulk_host = if scenario.same_endpoint {
        &net.endpoint_a
    } else {
        &net.endpoint_b
    };
    let bulk = scenario.bulk.then_some(bulk_host.as_str());
    let engine = scenario.engine;
    let run = || {
        run_scenario(
            net,
            engine,
            &net.endpoint_a,
            bulk,
            OLTP_TPS,
            options.seconds,
        )
    };
    match &scenario.setup {
        Setup::Plain => {
            net.plain_link(&options.link_rate);
            let outcome = run();
            net.clear_link();
            outcome
        }
        Setup::CniTbf => {
            net.plain_link(&options.link_rate);
            // The plugin's TBF: its 25 ms latency; a 64 KiB burst (see
            // docs/benchmarks.md on why not kubelet's 2^31-bit burst).
            sh(
                "tc",
                &[
                    "qdisc",
                    "replace",
                    "dev",
                    &net.bulk_port,
                    "root",
                    "tbf",
                    "rate",
                    BULK_RATE,
                    "burst",
                    "64kb",
                    "latency",
                    "25ms",
                ],
            );
            let outcome = run();
            sh_quiet("tc", &["qdisc", "del", "dev", &net.bulk_port, "root"]);
            net.clear_link();
            outcome
        }
        Setup::Daemon(claims) => {
            let root = BpffsRoot::new();
            let dir = TempDir::new("pbdb");
            let mut daemon =
                start_daemon_on_link(net, root.as_str(), &dir.0, claims, &options.link_rate);
            let outcome = run();
            daemon.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(10));
            outcome
        }
    }
}

fn table(rows: &[Row], options: &Options) {
    println!(
        "### OLTP latency under a bulk export ({} link, {OLTP_TPS} tps from 4 clients, {} s a run, median of {} runs)\n",
        options.link_rate, options.seconds, options.runs
    );
    println!(
        "PostgreSQL: `pgbench -S`, latency from each transaction's scheduled start; bulk: three \
         `COPY pgbench_accounts TO STDOUT` loops (scale 10). MariaDB: `sysbench oltp_point_select`, \
         latency from its histogram; bulk: three `SELECT * FROM sbtest1` loops (400,000 rows). \
         Bulk Mbit/s is wire bytes toward the bulk client.\n"
    );
    println!("| scenario | p50 ms | p99 ms | p99 range ms | p99.9 ms | TPS | bulk Mbit/s |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let (low, high) = row.p99_range();
        println!(
            "| {} | {:.2} | {:.2} | {:.2}-{:.2} | {:.2} | {:.0} | {:.1} |",
            row.name,
            row.median(|o| o.oltp.percentile_ms(0.5)),
            row.median(|o| o.oltp.percentile_ms(0.99)),
            low,
            high,
            row.median(|o| o.oltp.percentile_ms(0.999)),
            row.median(|o| o.oltp.tps()),
            row.median(|o| o.bulk_mbit)
        );
    }
    println!();
}

/// Latency CDFs, one line per scenario, log-scaled latency.
fn plot(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let max_ms = rows
        .iter()
        .flat_map(|r| &r.runs)
        .map(|o| o.oltp.percentile_ms(1.0))
        .fold(1.0f64, f64::max)
        * 1.5;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("OLTP latency under a bulk export (CDF)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.1f64..max_ms).log_scale(), 0.0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction of transactions")
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        // Every run's transactions together.
        let mut sorted: Vec<u64> = row
            .runs
            .iter()
            .flat_map(|o| o.oltp.latencies_us.iter().copied())
            .collect();
        sorted.sort_unstable();
        let n = sorted.len() as f64;
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .map(|(k, us)| ((*us as f64 / 1000.0).max(0.1), (k + 1) as f64 / n))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(row.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Set by SIGINT/SIGTERM: the bench stops after the run in progress and
/// tears everything down (databases, namespaces, pins) on its way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn interrupted(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() {
    require_root();
    // SAFETY: the handler only stores to an atomic, which is signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t);
        libc::signal(
            libc::SIGTERM,
            interrupted as *const () as libc::sighandler_t,
        );
    }
    if !bench() {
        eprintln!("bench db: interrupted; everything it started is removed");
        std::process::exit(130);
    }
}

/// Runs the bench; false if it was interrupted (after cleaning up).
fn bench() -> bool {
    let options = options();
    let net = DbNet::new();
    let _pg = Postgres::start(&net.db, &[&net.endpoint_a, &net.endpoint_b], 10);
    // 400,000 rows: about 75 MB a SELECT, like pgbench's accounts table.
    let _maria = (!options.demo).then(|| MariaDb::start(&net.db, &net.endpoint_a, 400_000));
    let scenarios = scenarios(&net, &options);
    let mut rows: Vec<Row> = scenarios
        .iter()
        .map(|s| Row {
            name: s.name,
            runs: Vec::new(),
        })
        .collect();
    // Rounds alternate the scenarios, so that a noisy minute on this
    // shared machine spreads over all of them instead of sinking one.
    for round in 1..=options.runs {
        for (scenario, row) in scenarios.iter().zip(&mut rows) {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return false;
            }
            eprintln!("bench db: round {round}: {} ...", scenario.name);
            let outcome = run(&net, scenario, &options);
            eprintln!(
                "bench db: round {round}: {}: p99 {:.2} ms, bulk {:.1} Mbit/s",
                scenario.name,
                outcome.oltp.percentile_ms(0.99),
                outcome.bulk_mbit
            );
            row.runs.push(outcome);
        }
    }
    table(&rows, &options);
    if !INTERRUPTED.load(Ordering::SeqCst) {
        identity_figures(&net, &options);
    }
    if !options.demo {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/db-latency.svg");
        match plot(&rows, &path) {
            Ok(()) => println!("Latency CDFs: [db-latency.svg](db-latency.svg)\n"),
            Err(error) => eprintln!("bench db: plotting failed: {error}"),
        }
    }
    true
}

/// SQL identity's own figures: `CONNECTIONS` clear connections of the bulk
/// user, one after another, each copying 2,000 rows of pgbench's accounts
/// table (about 200 KB), with no
/// other traffic: start-to-tag latency from the daemon's state file, and
/// the bytes of each connection counted in the endpoint's class (`orders`)
/// rather than its own, i.e. what passed before the tag.
fn identity_figures(net: &DbNet, options: &Options) {
    const CONNECTIONS: usize = 30;
    let root = BpffsRoot::new();
    let dir = TempDir::new("pbid");
    let claims = same_endpoint_claims(net, Engine::Postgres, &options.link_rate, false);
    let mut daemon = start_daemon_on_link(net, root.as_str(), &dir.0, &claims, &options.link_rate);
    let (orders, reports) = (
        class_of(&dir.0, "db/orders"),
        class_of(&dir.0, "db/reports"),
    );
    let bytes = |class: u32| {
        pisa_daemon::kernel::pinned::class_stats(&root.layout(), [class].into_iter())
            .expect("class counters")[&class]
            .bytes
    };
    let (orders_before, reports_before) = (bytes(orders), bytes(reports));
    for _ in 0..CONNECTIONS {
        psql_as(
            &net.bulk,
            &net.endpoint_a,
            BULK_USER,
            "disable",
            "COPY (SELECT * FROM pgbench_accounts LIMIT 2000) TO STDOUT",
        );
    }
    let before_tag = (bytes(orders) - orders_before) as f64 / CONNECTIONS as f64;
    let tagged = (bytes(reports) - reports_before) as f64 / CONNECTIONS as f64;
    wait_until(
        "the state file to count every connection",
        std::time::Duration::from_secs(15),
        || identity_count(&dir.0, "db/reports", "identified") >= CONNECTIONS as u64,
    );
    let latency = daemon_state(&dir.0)["identity"]["tag_latency_us"].clone();
    daemon.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(10));
    println!("### SQL identity: from the start message to the tag ({CONNECTIONS} PostgreSQL connections)\n");
    println!(
        "Each connection: `psql` as `{BULK_USER}` (sslmode=disable), one `COPY (SELECT * FROM \
         pgbench_accounts LIMIT 2000) TO STDOUT`, one after another, nothing else on the link. Latency: from the program \
         seeing the StartupMessage (`bpf_ktime_get_ns`) to the tag written in both directions \
         (the daemon's own clock, same source).\n"
    );
    println!("| start to tag, median | p99 | max | bytes per connection before the tag (endpoint class) | bytes per connection after (its own class) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} us | {:.0} us | {:.0} us | {before_tag:.0} | {tagged:.0} |\n",
        latency["p50"].as_f64().unwrap_or(f64::NAN),
        latency["p99"].as_f64().unwrap_or(f64::NAN),
        latency["max"].as_f64().unwrap_or(f64::NAN),
    );
}

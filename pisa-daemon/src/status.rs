//! `pisa-daemon status`: a table (or JSON) of classes with live counters.
//! It asks the running daemon through the gRPC API. When no daemon answers,
//! it reads the counters straight from the pinned maps, with claim names
//! from the last published state file, so it works while the daemon is down.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{anyhow, Context, Result};
use pisa_daemon::{
    api::{
        client::{connect, ApiTarget},
        pb,
    },
    kernel::{features, pinned, PinLayout},
    model::{LeafQueue, ShapingMode},
    spec::units::format_rate,
    state,
};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    claim: String,
    class_id: u32,
    mode: String,
    rate_bytes: u64,
    ceil_bytes: u64,
    priority: String,
    /// The queue inside the class (htb): fq_codel or a short bfifo.
    queue: String,
    interfaces: Vec<String>,
    bytes: u64,
    packets: u64,
    current_rate_bytes: u64,
    drops: u64,
    phase: String,
}

#[derive(Serialize)]
struct Report {
    daemon_running: bool,
    /// Where the figures came from: the API, or the pinned maps.
    source: String,
    classes: Vec<Row>,
    invalid: Vec<(String, String)>,
    source_errors: Vec<String>,
    /// Client selectors and SQL identity, from the daemon's state file
    /// (absent when it cannot be read).
    selectors: Option<Selectors>,
    /// Each interface's link rate, from the daemon's state file.
    links: BTreeMap<String, state::PublishedLinkRate>,
}

#[derive(Serialize)]
struct Selectors {
    /// Client prefixes in force, by claim (claims with client selectors).
    client_prefixes: BTreeMap<String, usize>,
    identity: state::PublishedIdentity,
}

fn selectors(state_file: &Path) -> Option<Selectors> {
    let published = state::read(state_file).ok()?;
    Some(Selectors {
        client_prefixes: published
            .claims
            .iter()
            .filter(|c| c.client_prefixes > 0)
            .map(|c| (c.claim.clone(), c.client_prefixes))
            .collect(),
        identity: published.identity,
    })
}

pub fn status(
    runtime: &tokio::runtime::Runtime,
    target: &ApiTarget,
    bpffs: &Path,
    state_file: &Path,
    json: bool,
    sample: Duration,
) -> Result<bool> {
    let mut report = match runtime.block_on(connect(target)) {
        Ok(client) => runtime.block_on(from_api(client, target, sample))?,
        Err(unreachable) => {
            tracing::debug!(error = %unreachable, "no daemon answers; reading the pinned maps");
            from_pinned(bpffs, state_file, sample)?
        }
    };
    report.selectors = selectors(state_file);
    report.links = state::read(state_file)
        .map(|published| published.link_rates)
        .unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(report.invalid.is_empty() && report.source_errors.is_empty())
}

async fn from_api(
    mut client: pb::pisa_daemon_client::PisaDaemonClient<tonic::transport::Channel>,
    target: &ApiTarget,
    sample: Duration,
) -> Result<Report> {
    let rpc = |status: tonic::Status| anyhow!("{:?}: {}", status.code(), status.message());
    let listed = client
        .list_classes(pb::ListClassesRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    // The second message of a watch carries rates over exactly `sample`.
    let interval_ms = (sample.as_millis() as u32).clamp(100, 60_000);
    let mut watch = client
        .watch_stats(pb::WatchStatsRequest { interval_ms })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut stats = None;
    for _ in 0..2 {
        stats = watch.message().await.map_err(rpc)?;
    }
    let stats = stats.context("the daemon ended the stats stream early")?;
    let by_class: BTreeMap<u32, &pb::ClassStats> =
        stats.classes.iter().map(|c| (c.class_id, c)).collect();
    let claim_name = |c: &Option<pb::ClaimRef>| {
        c.as_ref()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .unwrap_or_default()
    };
    let phases: BTreeMap<String, &pb::ClaimState> = listed
        .claims
        .iter()
        .map(|c| (claim_name(&c.claim), c))
        .collect();
    let classes = listed
        .classes
        .iter()
        .map(|class| {
            let claim = claim_name(&class.claim);
            let counters = by_class.get(&class.class_id);
            Row {
                phase: phases
                    .get(&claim)
                    .map(|c| c.phase.clone())
                    .unwrap_or_else(|| "-".into()),
                claim,
                class_id: class.class_id,
                mode: pb::Mode::try_from(class.mode)
                    .map(|m| m.as_str_name().trim_start_matches("MODE_").to_lowercase())
                    .unwrap_or_default(),
                rate_bytes: class.rate_bytes_per_second,
                ceil_bytes: class.ceil_bytes_per_second,
                priority: class.priority.clone(),
                queue: class.queue.clone(),
                interfaces: class.interfaces.clone(),
                bytes: counters.map_or(0, |c| c.bytes),
                packets: counters.map_or(0, |c| c.packets),
                current_rate_bytes: counters.map_or(0, |c| c.achieved_bytes_per_second as u64),
                drops: counters.map_or(0, |c| c.drops),
            }
        })
        .collect();
    Ok(Report {
        daemon_running: true,
        source: format!("api {target} (generation {})", listed.generation),
        classes,
        invalid: listed
            .claims
            .iter()
            .filter(|c| c.phase == "Invalid")
            .map(|c| (claim_name(&c.claim), c.message.clone()))
            .collect(),
        source_errors: listed.source_errors,
        selectors: None,
        links: BTreeMap::new(),
    })
}

fn from_pinned(bpffs: &Path, state_file: &Path, sample: Duration) -> Result<Report> {
    let layout = PinLayout::new(bpffs);
    let published = state::read(state_file).ok();
    let running = published
        .as_ref()
        .is_some_and(|s| Path::new(&format!("/proc/{}", s.pid)).exists());
    let classes = pinned::classes(&layout).with_context(|| {
        format!(
            "no Pisa-Daemon state under {} (is the daemon running with this --bpffs?)",
            bpffs.display()
        )
    })?;
    let fq_codel = features::probe().fq_codel;
    let first = pinned::class_stats(&layout, classes.keys().copied())?;
    std::thread::sleep(sample);
    let second = pinned::class_stats(&layout, classes.keys().copied())?;
    let interfaces = match &published {
        Some(s) => s.interfaces.clone(),
        None => layout.pinned_egress_links()?,
    };
    let names: BTreeMap<u32, String> = published
        .iter()
        .flat_map(|s| s.classes.iter().map(|c| (c.class_id, c.claim.clone())))
        .collect();
    let phases: BTreeMap<String, String> = published
        .iter()
        .flat_map(|s| s.claims.iter().map(|c| (c.claim.clone(), c.phase.clone())))
        .collect();
    let rows: Vec<Row> = classes
        .values()
        .map(|class| {
            let claim = names
                .get(&class.class_id)
                .cloned()
                .unwrap_or_else(|| "?".into());
            let (a, b) = (first[&class.class_id], second[&class.class_id]);
            // A class re-created between the samples starts again at zero.
            let rate = (b.bytes.saturating_sub(a.bytes) as f64 / sample.as_secs_f64()) as u64;
            Row {
                phase: phases.get(&claim).cloned().unwrap_or_else(|| "-".into()),
                claim,
                class_id: class.class_id,
                mode: class.mode.name().into(),
                rate_bytes: class.rate_bytes,
                ceil_bytes: class.ceil_bytes,
                priority: format!("htb prio {}", class.priority),
                queue: match class.mode {
                    ShapingMode::Htb => LeafQueue::for_class(class.ceil_bytes, fq_codel).describe(),
                    ShapingMode::Edt | ShapingMode::Police => String::new(),
                },
                interfaces: interfaces.clone(),
                bytes: b.bytes,
                packets: b.packets,
                current_rate_bytes: rate,
                drops: b.drops,
            }
        })
        .collect();
    let invalid: Vec<(String, String)> = published
        .iter()
        .flat_map(|s| s.claims.iter())
        .filter(|c| c.phase == "Invalid")
        .map(|c| (c.claim.clone(), c.message.clone()))
        .collect();
    Ok(Report {
        daemon_running: running,
        source: format!("pinned maps under {}", bpffs.display()),
        classes: rows,
        invalid,
        source_errors: published.map(|s| s.source_errors).unwrap_or_default(),
        selectors: None,
        links: BTreeMap::new(),
    })
}

/// `link eth0: 10Gbit (device), guaranteed 3Gbit (30%)`, and a warning
/// when the classes' rates add up to more than the link.
fn link_line(iface: &str, link: &state::PublishedLinkRate) -> String {
    let mut line = format!(
        "link {iface}: {} ({}), guaranteed {}",
        format_rate(link.rate_bytes),
        link.source,
        format_rate(link.guaranteed_bytes)
    );
    if link.rate_bytes > 0 {
        let percent = u128::from(link.guaranteed_bytes) * 100 / u128::from(link.rate_bytes);
        line.push_str(&format!(" ({percent}%)"));
    }
    if link.guaranteed_bytes > link.rate_bytes {
        line.push_str(
            ": oversubscribed, the classes' rates add up to more than the link, so not every \
             guarantee can hold while all of them are busy",
        );
    }
    line
}

fn print_table(report: &Report) {
    if !report.daemon_running {
        println!("(no running daemon: counters from the pinned maps; claim names may be missing)");
    }
    println!("source: {}", report.source);
    for (iface, link) in &report.links {
        println!("{}", link_line(iface, link));
    }
    println!(
        "{:<28} {:>5} {:<6} {:>10} {:>10} {:<12} {:<13} {:<20} {:>14} {:>12} {:>8} {:<8}",
        "CLAIM",
        "CLASS",
        "MODE",
        "RATE",
        "CEIL",
        "PRIO",
        "QUEUE",
        "INTERFACES",
        "BYTES",
        "CURRENT",
        "DROPS",
        "PHASE"
    );
    for row in &report.classes {
        println!(
            "{:<28} {:>5} {:<6} {:>10} {:>10} {:<12} {:<13} {:<20} {:>14} {:>12} {:>8} {:<8}",
            row.claim,
            row.class_id,
            row.mode,
            format_rate(row.rate_bytes),
            format_rate(row.ceil_bytes),
            row.priority,
            if row.queue.is_empty() {
                "-"
            } else {
                &row.queue
            },
            row.interfaces.join(","),
            row.bytes,
            format_rate(row.current_rate_bytes),
            row.drops,
            row.phase
        );
    }
    if let Some(selectors) = &report.selectors {
        print_selectors(selectors);
    }
    for (claim, message) in &report.invalid {
        println!("INVALID {claim}: {message}");
    }
    for message in &report.source_errors {
        println!("SOURCE ERROR {message}");
    }
}

/// Who is talking: client prefixes and SQL identity's counts per claim.
fn print_selectors(selectors: &Selectors) {
    for (claim, count) in &selectors.client_prefixes {
        println!("CLIENTS {claim}: {count} client prefix(es)");
    }
    let identity = &selectors.identity;
    for (claim, outcomes) in &identity.claims {
        let counts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("SQL {claim}: {}", counts.join(", "));
    }
    if let Some(latency) = &identity.tag_latency_us {
        println!(
            "SQL start-to-tag: median {:.0} us, p99 {:.0} us over {} connections",
            latency.p50, latency.p99, latency.samples
        );
    }
    let unread: u64 = ["throttled", "ring_full", "unreadable"]
        .iter()
        .filter_map(|k| identity.kernel.get(*k))
        .sum();
    if unread > 0 {
        println!("SQL starts the kernel could not hand up: {unread} (see pisa_sql_identity_kernel_events_total)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(rate_bytes: u64, guaranteed_bytes: u64) -> state::PublishedLinkRate {
        state::PublishedLinkRate {
            rate_bytes,
            source: "interface".into(),
            guaranteed_bytes,
        }
    }

    #[test]
    fn a_link_line_shows_the_share_promised_and_says_when_it_is_oversubscribed() {
        assert_eq!(
            link_line("eth0", &link(6_250_000, 3_750_000)),
            "link eth0: 50Mbit (interface), guaranteed 30Mbit (60%)"
        );
        let over = link_line("eth0", &link(6_250_000, 7_500_000));
        assert!(
            over.starts_with(
                "link eth0: 50Mbit (interface), guaranteed 60Mbit (120%): oversubscribed"
            ),
            "{over}"
        );
        assert_eq!(
            link_line("eth0", &link(6_250_000, 6_250_000)),
            "link eth0: 50Mbit (interface), guaranteed 50Mbit (100%)",
            "exactly full is not oversubscribed"
        );
    }
}

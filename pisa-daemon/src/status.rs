//! `pisa-daemon status`: a table (or JSON) of classes with live counters.
//! Names and claim states come from the running daemon's state file; the
//! counters always come straight from the pinned maps, so status works
//! (with class ids only) even when no daemon runs.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use pisa_daemon::{
    kernel::{pinned, PinLayout},
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
    priority: u8,
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
    classes: Vec<Row>,
    invalid: Vec<(String, String)>,
    source_errors: Vec<String>,
}

pub fn status(bpffs: &Path, state_file: &Path, json: bool, sample: Duration) -> Result<bool> {
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
            let rate = ((b.bytes - a.bytes) as f64 / sample.as_secs_f64()) as u64;
            Row {
                phase: phases.get(&claim).cloned().unwrap_or_else(|| "-".into()),
                claim,
                class_id: class.class_id,
                mode: class.mode.name().into(),
                rate_bytes: class.rate_bytes,
                ceil_bytes: class.ceil_bytes,
                priority: class.priority,
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
    let report = Report {
        daemon_running: running,
        classes: rows,
        invalid,
        source_errors: published.map(|s| s.source_errors).unwrap_or_default(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(report.invalid.is_empty() && report.source_errors.is_empty())
}

fn print_table(report: &Report) {
    if !report.daemon_running {
        println!("(no running daemon: counters from the pinned maps; claim names may be missing)");
    }
    println!(
        "{:<28} {:>5} {:<6} {:>10} {:>10} {:>4} {:<20} {:>14} {:>12} {:>8} {:<8}",
        "CLAIM",
        "CLASS",
        "MODE",
        "RATE",
        "CEIL",
        "PRIO",
        "INTERFACES",
        "BYTES",
        "CURRENT",
        "DROPS",
        "PHASE"
    );
    for row in &report.classes {
        println!(
            "{:<28} {:>5} {:<6} {:>10} {:>10} {:>4} {:<20} {:>14} {:>12} {:>8} {:<8}",
            row.claim,
            row.class_id,
            row.mode,
            format_rate(row.rate_bytes),
            format_rate(row.ceil_bytes),
            row.priority,
            row.interfaces.join(","),
            row.bytes,
            format_rate(row.current_rate_bytes),
            row.drops,
            row.phase
        );
    }
    for (claim, message) in &report.invalid {
        println!("INVALID {claim}: {message}");
    }
    for message in &report.source_errors {
        println!("SOURCE ERROR {message}");
    }
}

//! The `pisa-daemon` binary, checked from outside with bpftool.

use std::time::Duration;

use crate::support::*;

const SIGTERM: i32 = 15;

#[test]
fn run_attaches_by_name_and_bpftool_prints_counters_with_field_names() {
    require_root();
    let veth = VethToNs::new();
    let root = BpffsRoot::new();
    // Keep the published state out of /run: nothing may outlive the test.
    let state = std::env::temp_dir().join(format!("{}.json", unique("pstate")));
    let mut daemon = spawn_daemon(&[
        "run",
        "--iface",
        &veth.host,
        "--bpffs",
        root.as_str(),
        "--state-file",
        state.to_str().unwrap(),
    ]);
    wait_until(
        "the daemon to attach at egress",
        Duration::from_secs(20),
        || {
            daemon.assert_running();
            egress_attachment(&root, &veth.host).is_some()
        },
    );

    // The program is loaded under its name, and a link points at it.
    let ids = bpftool_prog_ids("pisa_tc_egress");
    let pinned_prog = bpftool_json(&[
        "prog",
        "show",
        "pinned",
        root.layout().program("pisa_tc_egress").to_str().unwrap(),
    ]);
    let prog_id = pinned_prog["id"].as_u64().expect("pinned program id");
    assert!(
        ids.contains(&prog_id),
        "prog show lists {ids:?}, pinned is {prog_id}"
    );
    assert_eq!(pinned_prog["type"], "sched_cls");
    // A TCX link (6.6+) or, before TCX, a cls_bpf filter runs it.
    let attachment = egress_attachment(&root, &veth.host).expect("attached");
    assert_eq!(
        attachment["prog_id"].as_u64(),
        Some(prog_id),
        "egress of {} runs another program: {attachment}",
        veth.host
    );

    // Traffic through the interface shows up, with BTF field names.
    sh("ping", &["-c", "3", "-i", "0.2", "-W", "1", &veth.ns_ip]);
    let dump = bpftool_json(&[
        "map",
        "dump",
        "pinned",
        root.layout().map("IFACE_STATS").to_str().unwrap(),
    ]);
    let entry = dump
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["formatted"]["key"]["ifindex"].as_u64() == Some(u64::from(veth.host_ifindex())))
        .unwrap_or_else(|| panic!("no IFACE_STATS entry for {}: {dump}", veth.host));
    assert_eq!(entry["formatted"]["key"]["direction"], 0);
    let values = entry["formatted"]["values"]
        .as_array()
        .expect("per-CPU values");
    let packets: u64 = values
        .iter()
        .map(|v| {
            v["value"]["packets"]
                .as_u64()
                .expect("`packets` field by name")
        })
        .sum();
    let bytes: u64 = values
        .iter()
        .map(|v| v["value"]["bytes"].as_u64().expect("`bytes` field by name"))
        .sum();
    assert!(packets >= 3, "3 pings sent, {packets} packets counted");
    assert!(
        bytes >= 3 * 98,
        "3 pings of 98 bytes, {bytes} bytes counted"
    );
    let reasons = bpftool_json(&[
        "map",
        "dump",
        "pinned",
        root.layout().map("REASON_STATS").to_str().unwrap(),
    ]);
    assert!(
        reasons.to_string().contains("\"packets\""),
        "REASON_STATS must print field names: {reasons}"
    );

    // SIGTERM: clean exit, state kept.
    let status = daemon.signal_and_wait(SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "daemon exited with {status}");
    assert_eq!(
        egress_attachment(&root, &veth.host),
        Some(attachment),
        "the attachment must stay in force after exit"
    );
    assert!(bpftool_prog_ids("pisa_tc_egress").contains(&prog_id));

    assert!(
        state.exists(),
        "the daemon publishes its state for `status`"
    );
    let _ = std::fs::remove_file(&state);

    // cleanup removes everything it made.
    let (ok, _, stderr) = run_daemon(&["cleanup", "--bpffs", root.as_str()]);
    assert!(ok, "cleanup failed: {stderr}");
    assert!(!root.path.exists());
    assert_eq!(egress_attachment(&root, &veth.host), None, "detached");
    assert!(!bpftool_prog_ids("pisa_tc_egress").contains(&prog_id));
}

#[test]
fn run_rejects_missing_interface_by_name() {
    require_root();
    let root = BpffsRoot::new();
    let (ok, _, stderr) = run_daemon(&["run", "--iface", "pisa-nope9", "--bpffs", root.as_str()]);
    assert!(!ok);
    assert!(
        stderr.contains("interface `pisa-nope9` does not exist") && stderr.contains("ip link show"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn run_needs_an_interface_unless_it_follows_pods() {
    let root = BpffsRoot::new();
    let (ok, _, stderr) = run_daemon(&["run", "--bpffs", root.as_str()]);
    assert!(!ok);
    assert!(stderr.contains("--iface <NAME>"), "{stderr}");
    let (ok, _, stderr) = run_daemon(&[
        "run",
        "--kube",
        "--node-name",
        "node-a",
        "--no-follow-pods",
        "--bpffs",
        root.as_str(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--iface: none given, and Pods are not followed (--no-follow-pods)"),
        "{stderr}"
    );
    assert!(
        !root.path.exists(),
        "nothing may be pinned before the check"
    );
}

#[test]
fn run_rejects_a_bpffs_root_that_is_not_bpffs() {
    require_root();
    let veth = VethToNs::new();
    let dir = std::env::temp_dir().join(unique("pisa-nb"));
    let (ok, _, stderr) = run_daemon(&[
        "run",
        "--iface",
        &veth.host,
        "--bpffs",
        dir.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("is not on a bpf filesystem"), "{stderr}");
    assert!(stderr.contains("mount -t bpf bpf /sys/fs/bpf"), "{stderr}");
    assert!(!dir.exists(), "nothing may be created outside bpffs");
}

#[test]
fn run_without_capabilities_names_the_missing_ones() {
    require_root();
    require_tool("setpriv");
    let root = BpffsRoot::new();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            daemon_bin(),
            "run",
            "--iface",
            "lo",
            "--bpffs",
            root.as_str(),
        ])
        .output()
        .expect("running setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("missing capabilities")
            && stderr.contains("CAP_BPF")
            && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
}

#[test]
fn help_describes_every_command() {
    let (ok, stdout, _) = run_daemon(&["--help"]);
    assert!(ok);
    for needle in ["run", "cleanup", "--log-format"] {
        assert!(stdout.contains(needle), "--help lacks {needle}: {stdout}");
    }
    let (ok, stdout, _) = run_daemon(&["run", "--help"]);
    assert!(ok);
    for needle in ["--iface", "--bpffs", "/sys/fs/bpf/pisa", "SIGTERM"] {
        assert!(
            stdout.contains(needle),
            "run --help lacks {needle}: {stdout}"
        );
    }
}

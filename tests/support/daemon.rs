//! The daemon under test: its binary, its bpffs root, its API socket, and
//! bpftool to look at what it pinned.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use pisa_daemon::kernel::{AttachMode, PinLayout};

use super::{
    host::{require_tool, sh, unique},
    process::ChildGuard,
};

/// A unique bpffs root, cleaned up (detached and unpinned) on drop.
pub struct BpffsRoot {
    pub path: PathBuf,
}

impl BpffsRoot {
    pub fn new() -> Self {
        let path = PathBuf::from("/sys/fs/bpf").join(unique("pisa-t"));
        assert!(
            !path.exists(),
            "{} exists already; a previous run leaked it",
            path.display()
        );
        Self { path }
    }

    pub fn layout(&self) -> PinLayout {
        PinLayout::new(&self.path)
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for BpffsRoot {
    fn drop(&mut self) {
        if let Err(e) = pisa_daemon::kernel::pinned::cleanup(&self.layout()) {
            eprintln!("cleanup of {} failed: {e}", self.path.display());
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Path of the daemon binary built for these tests.
pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pisa-daemon")
}

/// The Python of the tests' third-party clients: a venv `cargo xtask setup`
/// builds with Debian's python3, so that any user can run it.
pub fn test_python() -> PathBuf {
    let python = std::env::var_os("PISA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/pisa-test-venv/bin/python3"));
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it builds the test venv)",
        python.display()
    );
    python
}

/// The gRPC socket of daemons this test process starts: one per process
/// (tests run one at a time), never the system-wide `/run/pisa/pisa.sock`.
/// The guard of a daemon removes it when the daemon goes away.
pub fn api_socket() -> PathBuf {
    std::env::temp_dir().join(format!("pisa-api-{}.sock", std::process::id()))
}

/// Starts `pisa-daemon` with `args`, stderr captured.
pub fn spawn_daemon(args: &[&str]) -> ChildGuard {
    spawn_daemon_with_env(args, &[])
}

/// `spawn_daemon` with extra environment variables.
pub fn spawn_daemon_with_env(args: &[&str], env: &[(&str, &Path)]) -> ChildGuard {
    spawn_binary(daemon_bin(), args, env)
}

/// The previous release's daemon (`cargo xtask previous` builds it; the
/// test command does so first). A missing one fails the test that needs it.
pub fn previous_daemon_bin() -> PathBuf {
    let path = std::env::var_os("PISA_PREVIOUS_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/previous/pisa-daemon")
        });
    assert!(
        path.exists(),
        "the previous release's daemon is not at {}: run `cargo xtask previous` (cargo xtask \
         test does) or set PISA_PREVIOUS_DAEMON",
        path.display()
    );
    path
}

/// Starts the daemon binary `bin` with `args`, stderr captured.
pub fn spawn_binary(
    bin: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    env: &[(&str, &Path)],
) -> ChildGuard {
    let child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env("PISA_API_SOCKET", api_socket())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning pisa-daemon");
    ChildGuard::new(child, format!("pisa-daemon {}", args.join(" ")))
        // A daemon killed with SIGKILL leaves its socket file behind.
        .removing_on_drop(api_socket())
}

/// Runs `pisa-daemon` to completion: (success, stdout, stderr).
pub fn run_daemon(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(daemon_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("PISA_API_SOCKET", api_socket())
        .output()
        .expect("running pisa-daemon");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bpftool -j …` parsed as JSON.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    require_tool("bpftool");
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = sh("bpftool", &full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool JSON: {e}: {out}"))
}

/// What runs at egress of `iface` for `root`, as the kernel shows it from
/// outside: `id` is the pinned TCX link's id (6.6+) or, without TCX, the
/// cls_bpf filter's handle on the clsact egress hook; `prog_id` is the
/// program it runs. `None` when nothing of ours is attached there.
pub fn egress_attachment(root: &BpffsRoot, iface: &str) -> Option<serde_json::Value> {
    attachment(root, iface, Hook::Egress)
}

/// `egress_attachment` for the SQL-identity observer at ingress.
pub fn ingress_attachment(root: &BpffsRoot, iface: &str) -> Option<serde_json::Value> {
    attachment(root, iface, Hook::Ingress)
}

#[derive(Clone, Copy)]
enum Hook {
    Egress,
    Ingress,
}

fn attachment(root: &BpffsRoot, iface: &str, hook: Hook) -> Option<serde_json::Value> {
    let (pin, tc_hook, program) = match hook {
        Hook::Egress => (root.layout().egress_link(iface), "egress", "pisa_tc_egress"),
        Hook::Ingress => (
            root.layout().ingress_link(iface),
            "ingress",
            "pisa_tc_ingress",
        ),
    };
    match AttachMode::probe() {
        AttachMode::Tcx => {
            if !pin.exists() {
                return None;
            }
            let link = bpftool_json(&["link", "show", "pinned", pin.to_str()?]);
            Some(serde_json::json!({"id": link["id"], "prog_id": link["prog_id"]}))
        }
        AttachMode::Netlink => {
            let out = Command::new("tc")
                .args(["-j", "filter", "show", "dev", iface, tc_hook])
                .output()
                .expect("running tc");
            // No clsact qdisc (or no interface): nothing is attached.
            let filters: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            filters.as_array()?.iter().find_map(|filter| {
                let options = &filter["options"];
                // The kernel keeps 15 bytes of a program's name.
                let ours = filter["kind"] == "bpf"
                    && options["prog"]["name"]
                        .as_str()
                        .is_some_and(|name| !name.is_empty() && program.starts_with(name));
                ours.then(|| serde_json::json!({"id": options["handle"], "prog_id": options["prog"]["id"]}))
            })
        }
    }
}

/// The entries of the pinned `FLOW_TAGS` under `root`, as `bpftool map
/// dump` prints them.
pub fn pinned_flow_tags(root: &BpffsRoot) -> Vec<serde_json::Value> {
    let path = root.layout().map("FLOW_TAGS");
    bpftool_json(&["map", "dump", "pinned", path.to_str().unwrap()])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Ids of loaded programs with this name, from `bpftool prog show`.
pub fn bpftool_prog_ids(name: &str) -> Vec<u64> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("bpftool prog show: array")
        .iter()
        .filter(|p| p["name"] == name)
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

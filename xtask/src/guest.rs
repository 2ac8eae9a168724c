//! Boots a Debian kernel under QEMU and runs one command in it, as root,
//! on the host's own root filesystem (shared read-only over virtiofs,
//! with a throwaway tmpfs overlay), so the project's binaries and the
//! test tools run in the guest unchanged.
//!
//! TCG, not KVM: this host's /dev/kvm is a software hypervisor that cannot
//! boot stock Debian kernels (`../shared/kernels/RECIPE.md`). A guest
//! reaches its command in about 5 s. Its console carries the command's
//! output; markers around it give the exit status back.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::kernels::{cache_dir, path_str, Kernel};

const INIT: &str = include_str!("guest_init.sh");
/// The modules (with their dependencies) the first stage loads to reach
/// the host root; whichever of them are built in are skipped.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtiofs", "overlay"];
const START: &str = "@@GUEST_START";
const STATUS: &str = "@@GUEST_STATUS=";

pub struct Guest<'a> {
    pub kernel: &'a Kernel,
    pub cpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
}

/// What the guest's command printed, and how it ended.
pub struct Finished {
    pub lines: Vec<String>,
    /// The command's exit status; `None` when the guest died, hung or ran
    /// out of time before the command finished.
    pub status: Option<i32>,
    pub seconds: f64,
    /// The console outside the command: the boot, and whatever the kernel
    /// printed after the command's output ended (a crash report).
    pub console: Vec<String>,
}

impl Guest<'_> {
    /// Runs `command` with `/bin/sh` in the guest, from `cwd`, echoing its
    /// output as it comes.
    pub fn run(&self, cwd: &Path, command: &str) -> Result<Finished> {
        let started = Instant::now();
        let work = TempDir::new()?;
        let initrd = self.initrd(&work.0, cwd, command)?;
        let socket = work.0.join("virtiofs.sock");
        let _virtiofsd = Virtiofsd::start(&socket)?;
        let memory = format!("{}M", self.memory_mib);
        let kernel_args = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init";
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", "tcg", "-cpu", "max", "-m", &memory])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-display", "none", "-vga", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-nic", "none", "-no-reboot"])
            .args(["-kernel", &path_str(&self.kernel.image())?])
            .args(["-initrd", &path_str(&initrd)?, "-append", kernel_args])
            .args([
                "-chardev",
                &format!("socket,id=hostroot,path={}", path_str(&socket)?),
                "-device",
                "vhost-user-fs-pci,chardev=hostroot,tag=hostroot",
                // vhost-user needs guest memory the daemon can map.
                "-object",
                &format!("memory-backend-memfd,id=mem,size={memory},share=on"),
                "-numa",
                "node,memdev=mem",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // QEMU dies with this process, however it ends (a killed xtask
        // left guests running for their whole timeout before).
        // SAFETY: prctl is async-signal-safe and touches no memory.
        unsafe {
            qemu.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let qemu = qemu
            .spawn()
            .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
        let mut qemu = Watchdog::start(qemu, self.timeout);
        let console = qemu.child.stdout.take().context("qemu stdout")?;
        let (mut lines, mut status, mut inside) = (Vec::new(), None, false);
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(console).lines() {
            let line = line.context("reading the guest console")?;
            let line = line.trim_end_matches('\r').to_owned();
            if line == START {
                inside = true;
                continue;
            }
            if let Some(at) = line.find(STATUS) {
                // Output without a final newline shares the marker's line.
                if inside && at > 0 {
                    println!("{}", &line[..at]);
                    lines.push(line[..at].to_owned());
                }
                status = line[at + STATUS.len()..].trim().parse().ok();
                inside = false;
                continue;
            }
            if inside {
                println!("{line}");
                lines.push(line);
            } else {
                tail.push(line);
            }
        }
        let exit = qemu.wait()?;
        if status.is_none() {
            eprintln!(
                "guest {}: did not finish ({exit}); its console:\n{}",
                self.kernel.version,
                tail.iter()
                    .rev()
                    .take(30)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(Finished {
            lines,
            status,
            seconds: started.elapsed().as_secs_f64(),
            console: tail,
        })
    }

    /// The initramfs: busybox, the boot modules and the first stage
    /// (cached per kernel), then this run's command in a second archive;
    /// the kernel unpacks concatenated archives in order.
    fn initrd(&self, work: &Path, cwd: &Path, command: &str) -> Result<PathBuf> {
        // Named by the first stage's text too, so that editing it rebuilds.
        let base = cache_dir().join(format!(
            "initrd-{}-{:016x}.cpio",
            self.kernel.version,
            fnv1a(INIT.as_bytes())
        ));
        if !base.exists() {
            let tree = work.join("base");
            for dir in [
                "bin", "dev", "proc", "sys", "host", "newroot", "upper", "modules",
            ] {
                std::fs::create_dir_all(tree.join(dir))?;
            }
            std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
                .context("copying /bin/busybox (install busybox-static)")?;
            self.boot_modules(&tree.join("modules"))?;
            write_executable(&tree.join("init"), INIT)?;
            cpio(&tree, &base)?;
        }
        let run = work.join("run");
        std::fs::create_dir_all(run.join("guest"))?;
        std::fs::write(run.join("guest/command"), format!("{command}\n"))?;
        std::fs::write(
            run.join("guest/env"),
            format!(
                "GUEST_KERNEL={}\nGUEST_MODULES='{}'\nGUEST_CWD='{}'\n",
                self.kernel.version,
                path_str(&self.kernel.modules())?,
                path_str(cwd)?
            ),
        )?;
        let run_archive = work.join("run.cpio");
        cpio(&run, &run_archive)?;
        let initrd = work.join("initrd");
        let mut bytes = std::fs::read(&base)?;
        bytes.extend(std::fs::read(&run_archive)?);
        std::fs::write(&initrd, bytes)?;
        Ok(initrd)
    }

    /// Copies the boot modules in load order, decompressed (busybox insmod
    /// reads neither .ko.xz nor .ko.zst).
    fn boot_modules(&self, into: &Path) -> Result<()> {
        let root = path_str(&self.kernel.root)?;
        let mut order: Vec<String> = Vec::new();
        for module in BOOT_MODULES {
            let out = crate::shell::output(
                "modprobe",
                &[
                    "-d",
                    &root,
                    "-S",
                    &self.kernel.version,
                    "--show-depends",
                    module,
                ],
            )?;
            for line in out.lines() {
                if let Some(path) = line.strip_prefix("insmod ") {
                    let path = path
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if !order.contains(&path) {
                        order.push(path);
                    }
                }
            }
        }
        for (n, path) in order.iter().enumerate() {
            let name = Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("module");
            let name = name.split(".ko").next().unwrap_or(name);
            let target = into.join(format!("{n:02}-{name}.ko"));
            let bytes = if path.ends_with(".xz") {
                decompress("xz", path)?
            } else if path.ends_with(".zst") {
                decompress("zstd", path)?
            } else {
                std::fs::read(path)?
            };
            std::fs::write(target, bytes)?;
        }
        Ok(())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn decompress(tool: &str, path: &str) -> Result<Vec<u8>> {
    let out = Command::new(tool)
        .args(["-dc", path])
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn cpio(tree: &Path, archive: &Path) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", "find . | cpio -o -H newc --quiet > \"$0\""])
        .arg(archive)
        .current_dir(tree)
        .status()
        .context("running cpio (install cpio)")?;
    if !status.success() {
        bail!("cpio of {} failed: {status}", tree.display());
    }
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// QEMU under a deadline: a thread kills it when the time is up, and
/// dropping the watchdog (an error or a panic in xtask) kills it too.
struct Watchdog {
    child: Child,
    /// Set once the child is to be reaped; the kill happens only before,
    /// under the same lock, so it never reaches a reused pid.
    reaped: std::sync::Arc<std::sync::Mutex<bool>>,
}

impl Watchdog {
    fn start(child: Child, timeout: Duration) -> Self {
        let reaped = std::sync::Arc::new(std::sync::Mutex::new(false));
        let pid = child.id() as libc::pid_t;
        let flag = reaped.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                if flag.lock().map_or(true, |reaped| *reaped) {
                    return;
                }
            }
            if let Ok(reaped) = flag.lock() {
                if !*reaped {
                    eprintln!("guest: no end after {} s, killing QEMU", timeout.as_secs());
                    // SAFETY: pid is our unreaped child (see `reaped`).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        });
        Self { child, reaped }
    }

    /// Waits for QEMU to exit, the deadline still armed: the child is
    /// reaped under the lock, so the kill never reaches a reused pid.
    fn wait(&mut self) -> Result<std::process::ExitStatus> {
        loop {
            {
                let mut reaped = self
                    .reaped
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the QEMU watchdog panicked"))?;
                if let Some(status) = self.child.try_wait().context("waiting for qemu")? {
                    *reaped = true;
                    return Ok(status);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Ok(mut reaped) = self.reaped.lock() {
            if !*reaped {
                *reaped = true;
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Debian 12's C virtiofsd (from qemu-system-common), sharing `/`.
/// `sandbox=chroot`: its default namespace sandbox fails on this host
/// (pivot_root: busy). It has no read-only mode; the guest mounts it `ro`.
struct Virtiofsd(Child);

impl Virtiofsd {
    fn start(socket: &Path) -> Result<Self> {
        let child = Command::new("/usr/lib/qemu/virtiofsd")
            .arg(format!("--socket-path={}", path_str(socket)?))
            .args([
                "-o",
                "source=/",
                "-o",
                "cache=always",
                "-o",
                "sandbox=chroot",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting /usr/lib/qemu/virtiofsd (install qemu-system-x86)")?;
        let daemon = Virtiofsd(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("virtiofsd made no socket at {} in 5 s", socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("pisa-guest-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_kills_a_child_that_outlives_its_deadline() {
        let child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let started = Instant::now();
        let status = Watchdog::start(child, Duration::from_millis(300))
            .wait()
            .expect("wait");
        assert!(!status.success(), "killed, not finished: {status}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_child_that_ends_in_time_is_left_alone() {
        let child = Command::new("true").spawn().expect("true");
        let status = Watchdog::start(child, Duration::from_secs(30))
            .wait()
            .expect("wait");
        assert!(status.success());
    }
}

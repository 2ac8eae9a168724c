//! Interface lookups.

use std::ffi::CString;

use super::KernelError;

/// `ARPHRD_ETHER` and `ARPHRD_LOOPBACK` carry a 14-byte MAC header at tc.
const ARPHRD_ETHER: u32 = 1;
const ARPHRD_LOOPBACK: u32 = 772;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// No MAC header at the tc hook (tunnels, WireGuard, …).
    pub l3_only: bool,
}

pub fn validate_name(iface: &str) -> Result<(), KernelError> {
    match crate::model::interface_name_problem(iface) {
        Some(reason) => Err(KernelError::InvalidInterfaceName {
            iface: iface.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Resolves a name to its index and device type in this network namespace.
pub fn lookup(iface: &str) -> Result<Interface, KernelError> {
    validate_name(iface)?;
    let c_name = CString::new(iface).map_err(|_| KernelError::InvalidInterfaceName {
        iface: iface.to_owned(),
        reason: "it contains NUL",
    })?;
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        return Err(KernelError::InterfaceNotFound {
            iface: iface.to_owned(),
        });
    }
    // sysfs reflects this process's network namespace, like if_nametoindex.
    let type_path = format!("/sys/class/net/{iface}/type");
    let link_type = std::fs::read_to_string(&type_path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(ARPHRD_ETHER);
    Ok(Interface {
        name: iface.to_owned(),
        ifindex,
        l3_only: link_type != ARPHRD_ETHER && link_type != ARPHRD_LOOPBACK,
    })
}

/// How many transmit queues `iface` has (`/sys/class/net/IFACE/queues/tx-*`);
/// 1 when they cannot be counted.
pub fn tx_queues(iface: &str) -> u32 {
    let dir = std::path::Path::new("/sys/class/net")
        .join(iface)
        .join("queues");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("tx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The speed `iface` reports (Mbit/s in sysfs, what ethtool shows), in
/// bytes per second; `None` where it reports none (-1 or an unreadable
/// attribute: tunnels, bridges, loopback, a link that is down).
pub fn speed_bytes(iface: &str) -> Option<u64> {
    let path = std::path::Path::new("/sys/class/net")
        .join(iface)
        .join("speed");
    let mbit: i64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    u64::try_from(mbit)
        .ok()
        .filter(|mbit| *mbit > 0)
        .map(|mbit| mbit * 1_000_000 / 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_rejected_with_reason() {
        for (name, why) in [
            ("", "empty"),
            ("a-very-long-interface-name", "longer than 15"),
            ("eth0/1", "'/'"),
            ("eth 0", "whitespace"),
        ] {
            let msg = validate_name(name).unwrap_err().to_string();
            assert!(msg.contains(why), "{name:?}: {msg}");
        }
        assert!(validate_name("veth-pisa0").is_ok());
    }

    #[test]
    fn missing_interface_names_itself() {
        let msg = lookup("pisa-nope0").unwrap_err().to_string();
        assert!(msg.contains("`pisa-nope0` does not exist"), "{msg}");
    }

    #[test]
    fn loopback_has_a_mac_header() {
        let lo = lookup("lo").unwrap();
        assert_eq!(lo.ifindex, 1);
        assert!(!lo.l3_only);
    }

    #[test]
    fn loopback_has_one_transmit_queue_and_a_missing_interface_counts_one() {
        assert_eq!(tx_queues("lo"), 1);
        assert_eq!(tx_queues("no-such-if0"), 1);
    }

    #[test]
    fn loopback_and_missing_interfaces_report_no_speed() {
        // lo's speed attribute cannot be read (EINVAL).
        assert_eq!(speed_bytes("lo"), None);
        assert_eq!(speed_bytes("no-such-if0"), None);
    }
}

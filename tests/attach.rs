//! Attaching through the daemon's library: real program, real veth, real
//! TCP traffic, counters compared with the kernel's own interface counters.

use crate::support::*;
use pisa_daemon::kernel::{pinned, AttachMode, Kernel};
use pisa_daemon_common::DIRECTION_EGRESS;

#[test]
fn egress_counters_equal_interface_counters_under_tcp_traffic() {
    require_root();
    let veth = VethToNs::new();
    let root = BpffsRoot::new();
    let mut kernel = Kernel::open(root.layout()).expect("loading the program");
    let attachment = kernel.attach_egress(&veth.host).expect("attaching");
    assert_eq!(attachment.mode, AttachMode::probe());
    assert_eq!(attachment.ifindex, veth.host_ifindex());
    assert!(!attachment.adopted, "fresh root must not adopt anything");

    let server = iperf3_server(&veth.ns, &veth.ns_ip, 5201);
    let before_program = pinned::iface_stats(&root.layout(), veth.host_ifindex(), DIRECTION_EGRESS)
        .expect("reading counters");
    let before_iface = veth.host_tx();

    // Host -> namespace: the data segments leave through the host end's egress.
    let report = iperf3_client(&veth.ns_ip, 5201, &["-t", "2"]);
    drop(server);

    // The last packets (FIN, RST) may be between the program and the
    // driver's counter when we look: wait for the two to meet.
    let egress = || {
        pinned::iface_stats(&root.layout(), veth.host_ifindex(), DIRECTION_EGRESS)
            .expect("reading counters")
    };
    wait_until(
        "the program's egress counters to equal the interface's tx counters",
        std::time::Duration::from_secs(2),
        || {
            let (program, iface) = (egress(), veth.host_tx());
            program.packets - before_program.packets == iface.0 - before_iface.0
                && program.bytes - before_program.bytes == iface.1 - before_iface.1
        },
    );
    let after_program = egress();
    let after_iface = veth.host_tx();
    // What arrived must have left through this egress. (iperf3's sent
    // count can include bytes a slow guest's sender still held when the
    // connection closed, which never reached the wire.)
    let sent = report["end"]["sum_received"]["bytes"]
        .as_u64()
        .expect("iperf3 bytes");

    let program_packets = after_program.packets - before_program.packets;
    let program_bytes = after_program.bytes - before_program.bytes;
    let iface_packets = after_iface.0 - before_iface.0;
    let iface_bytes = after_iface.1 - before_iface.1;
    assert!(sent > 1_000_000, "iperf3 sent only {sent} bytes");
    assert!(
        program_packets > 100,
        "program saw {program_packets} packets"
    );
    assert_eq!(
        program_packets, iface_packets,
        "per-CPU packet counters must add up to the interface's tx_packets"
    );
    assert_eq!(
        program_bytes, iface_bytes,
        "per-CPU byte counters must add up to the interface's tx_bytes"
    );
    assert!(
        program_bytes >= sent,
        "wire bytes {program_bytes} < payload bytes received {sent}"
    );
}

#[test]
fn attach_is_idempotent_and_reopening_adopts_the_same_objects() {
    require_root();
    let veth = VethToNs::new();
    let root = BpffsRoot::new();
    let (program_id, link_id) = {
        let mut kernel = Kernel::open(root.layout()).expect("loading");
        assert!(!kernel.adopted());
        let first = kernel.attach_egress(&veth.host).expect("attaching");
        let again = kernel.attach_egress(&veth.host).expect("attaching again");
        assert!(again.adopted, "a second attach must adopt, not stack");
        assert_eq!(first.link_id, again.link_id);
        (kernel.program_id(), first.link_id)
    };
    // Seen from outside: one TCX link, or one cls_bpf filter before TCX.
    let attachment = egress_attachment(&root, &veth.host).expect("attached");
    assert_eq!(attachment["prog_id"].as_u64(), Some(u64::from(program_id)));
    // A new process would do exactly this on restart.
    let mut kernel = Kernel::open(root.layout()).expect("re-opening");
    assert!(kernel.adopted());
    assert_eq!(
        kernel.program_id(),
        program_id,
        "same program after re-open"
    );
    let adopted = kernel.attach_egress(&veth.host).expect("adopting");
    assert!(adopted.adopted);
    assert_eq!(adopted.link_id, link_id, "same link after re-open");
    assert_eq!(
        egress_attachment(&root, &veth.host),
        Some(attachment),
        "the same attachment after re-open, not a second one"
    );
    let attached = bpftool_prog_ids("pisa_tc_egress");
    assert!(attached.contains(&u64::from(program_id)));
}

#[test]
fn detach_removes_the_link_and_cleanup_removes_everything() {
    require_root();
    let veth = VethToNs::new();
    let root = BpffsRoot::new();
    let program_id = {
        let mut kernel = Kernel::open(root.layout()).expect("loading");
        kernel.attach_egress(&veth.host).expect("attaching");
        assert!(kernel.detach_egress(&veth.host).expect("detaching"));
        assert!(!root.layout().egress_link(&veth.host).exists());
        assert_eq!(egress_attachment(&root, &veth.host), None, "detached");
        assert!(!kernel.detach_egress(&veth.host).expect("detaching twice"));
        kernel.attach_egress(&veth.host).expect("re-attaching");
        kernel.program_id()
    };
    // A map another build pinned here (a newer release's, before a
    // downgrade): the root is the daemon's, so cleanup removes it too.
    let foreign = root.layout().map("NEWER_MAP");
    sh(
        "bpftool",
        &[
            "map",
            "create",
            foreign.to_str().unwrap(),
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "NEWER_MAP",
        ],
    );
    assert!(foreign.exists());
    let report = pinned::cleanup(&root.layout()).expect("cleanup");
    assert_eq!(report.detached, vec![veth.host.clone()]);
    assert!(!root.path.exists(), "cleanup must remove the root");
    assert!(
        !bpftool_prog_ids("pisa_tc_egress").contains(&u64::from(program_id)),
        "program {program_id} still loaded after cleanup"
    );
}

#[test]
fn foreign_attachment_from_another_root_is_refused_with_advice() {
    require_root();
    let veth = VethToNs::new();
    let first = BpffsRoot::new();
    let second = BpffsRoot::new();
    let mut owner = Kernel::open(first.layout()).expect("loading first");
    owner.attach_egress(&veth.host).expect("attaching first");
    let mut intruder = Kernel::open(second.layout()).expect("loading second");
    let err = intruder
        .attach_egress(&veth.host)
        .expect_err("a second root must not stack a second classifier");
    let msg = err.to_string();
    assert!(msg.contains("already has `pisa_tc_egress`"), "{msg}");
    assert!(msg.contains("pisa-daemon cleanup --bpffs"), "{msg}");
    // The hand-made way out names this kernel's kind of attachment.
    let detach = match pisa_daemon::kernel::AttachMode::probe() {
        pisa_daemon::kernel::AttachMode::Tcx => {
            format!("bpftool net detach tcx_egress dev {}", veth.host)
        }
        pisa_daemon::kernel::AttachMode::Netlink => {
            format!("tc filter del dev {} egress pref 20816", veth.host)
        }
    };
    assert!(msg.contains(&detach), "{msg}");
    // The owner's attachment is untouched.
    let attachment = egress_attachment(&first, &veth.host).expect("still attached");
    assert_eq!(
        attachment["prog_id"].as_u64(),
        Some(u64::from(owner.program_id()))
    );
}

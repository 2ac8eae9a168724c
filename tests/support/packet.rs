//! Crafted packets for BPF_PROG_TEST_RUN, byte by byte, so every parse case
//! (VLAN, IPv4 options, IPv6 extension headers, truncation) is explicit.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub sport: u16,
    pub dport: u16,
    /// VLAN ids, outermost first (0, 1 or 2 tags).
    pub vlans: Vec<u16>,
    /// No MAC header (L3 device).
    pub l3: bool,
    /// IPv4 options length in bytes (multiple of 4, up to 40).
    pub ipv4_options: usize,
    /// IPv6 extension headers (next-header numbers), in order.
    pub ipv6_ext: Vec<u8>,
    /// IPv4 fragment offset in 8-byte units (non-zero = non-first fragment).
    pub frag_offset: u16,
    pub payload: usize,
    /// The payload's bytes, when given (else `payload` bytes of 0xAB).
    pub payload_bytes: Option<Vec<u8>>,
}

impl Packet {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            protocol: TCP,
            sport,
            dport,
            vlans: vec![],
            l3: false,
            ipv4_options: 0,
            ipv6_ext: vec![],
            frag_offset: 0,
            payload: 64,
            payload_bytes: None,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            protocol: UDP,
            ..Self::tcp(src, sport, dst, dport)
        }
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    pub fn l3(mut self) -> Self {
        self.l3 = true;
        self
    }

    pub fn payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    /// A payload of exactly these bytes.
    pub fn with_payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.len();
        self.payload_bytes = Some(bytes.to_vec());
        self
    }

    /// The frame as it would sit in the skb at tc egress.
    pub fn bytes(&self) -> Vec<u8> {
        let l4 = self.l4();
        let l3 = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s.octets(), d.octets(), &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s.octets(), d.octets(), &l4),
            _ => panic!("mixed address families"),
        };
        if self.l3 {
            return l3;
        }
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        let mut frame = ethernet(&self.vlans, ethertype);
        frame.extend_from_slice(&l3);
        frame
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        match self.protocol {
            TCP => {
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            }
            UDP => {
                let len = (8 + self.payload) as u16;
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            _ => l4.extend_from_slice(&[0, 0, 0, 0]),
        }
        match &self.payload_bytes {
            Some(bytes) => l4.extend_from_slice(bytes),
            None => l4.extend(std::iter::repeat_n(0xAB, self.payload)),
        }
        l4
    }

    fn ipv4(&self, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        assert!(self.ipv4_options.is_multiple_of(4) && self.ipv4_options <= 40);
        let ihl = 5 + self.ipv4_options / 4;
        let total = (ihl * 4 + l4.len()) as u16;
        let mut h = vec![0x40 | ihl as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0x12, 0x34]);
        h.extend_from_slice(&(self.frag_offset & 0x1FFF).to_be_bytes());
        h.extend_from_slice(&[64, self.protocol, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        // NOP options, then End-of-list in the last byte.
        for i in 0..self.ipv4_options {
            h.push(if i + 1 == self.ipv4_options { 0 } else { 1 });
        }
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    fn ipv6(&self, src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut next_of_each: Vec<u8> = self.ipv6_ext.iter().skip(1).copied().collect();
        next_of_each.push(self.protocol);
        for (kind, next) in self.ipv6_ext.iter().zip(next_of_each) {
            match *kind {
                44 => ext.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 1]),
                // Hop-by-hop, routing, destination options: 8 bytes (len 0)
                _ => ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]),
            }
        }
        let first_next = self.ipv6_ext.first().copied().unwrap_or(self.protocol);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[first_next, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(&ext);
        h.extend_from_slice(l4);
        h
    }
}

pub fn ethernet(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for id in vlans {
        frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

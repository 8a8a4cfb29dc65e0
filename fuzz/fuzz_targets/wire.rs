//! The wire views on arbitrary bytes: every checked constructor either refuses or
//! gives a view whose every accessor stays inside the buffer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podpath_dataplane::wire::{arp, checksum, ethernet, icmpv4, ipv4, tcp, udp, vxlan};

fuzz_target!(|d: &[u8]| {
    let _ = ethernet::parse_l2(d);
    if let Ok(f) = ethernet::Frame::new_checked(d) {
        let _ = ethernet::Repr::parse(&f);
    }
    if let Ok(a) = arp::Packet::new_checked(d) {
        let _ = arp::Repr::parse(&a);
    }
    let _ = checksum::verify(d);
    if let Ok(p) = ipv4::Packet::new_checked(d) {
        let _ = ipv4::Repr::parse(&p);
        let (src, dst) = (p.src_addr(), p.dst_addr());
        let _ = (
            p.verify_checksum(),
            p.options(),
            p.is_fragment(),
            p.frag_offset(),
        );
        let l4 = p.payload();
        if let Ok(t) = tcp::Packet::new_checked(l4) {
            let _ = (t.header_len(), t.flags(), t.seq_number(), t.window());
        }
        if let Ok(u) = udp::Packet::new_checked(l4) {
            let _ = (u.payload().len(), u.verify_checksum(src, dst));
            if let Ok(v) = vxlan::Packet::new_checked(u.payload()) {
                let _ = (v.vni(), v.flags(), v.payload().len());
                let _ = ethernet::parse_l2(v.payload());
            }
        }
        if let Ok(i) = icmpv4::Packet::new_checked(l4) {
            let _ = (i.msg_type(), i.echo_ident(), i.verify_checksum());
        }
    }
});

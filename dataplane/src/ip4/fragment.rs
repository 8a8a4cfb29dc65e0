//! `ip4-fragment`: splits an IPv4 packet that is bigger than where it goes, DF clear,
//! into fragments (RFC 791), as Linux does on output. Two places need it:
//! - the runner's output, for a frame bigger than its port's MTU: a datagram the
//!   kernel behind an af_packet port reassembled (its fanout defragments), or one
//!   from a port with a larger MTU;
//! - `vxlan-encap`, for an inner packet that would not fit the uplink after
//!   encapsulation: the inner packet is split and each piece encapsulated, so the
//!   remote node never has to reassemble outer packets (flannel's vxlan device does
//!   the same with its 1450-byte MTU).
//!
//! The pieces are copies into fresh buffers, in order, the first fragment first (a
//! receiving podpath translates later fragments by the first one's entry); the
//! original buffer becomes the last piece, so a datagram in k pieces costs k - 1
//! copies. Later fragments carry only the options marked "copied".
use crate::pipeline::{DropReason, Frame};
use crate::wire::{checksum, ethernet, ipv4};

/// Most pieces one datagram may be split into (the runner's scratch holds them; a
/// 61 KiB frame at MTU 576 needs 112).
pub const MAX_PIECES: usize = 128;

/// The IPv4 header offset of an Ethernet frame (untagged or one VLAN tag), if it
/// carries IPv4.
#[inline]
pub fn l3_offset(d: &[u8]) -> Option<usize> {
    match d.get(12..14)? {
        [0x08, 0x00] => Some(ethernet::HEADER_LEN),
        [0x81, 0x00] if d.get(16..18)? == [0x08, 0x00] => Some(ethernet::HEADER_LEN + 4),
        _ => None,
    }
}

/// How a datagram splits: payload bytes per piece, and the header lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The original header's length (the first piece keeps all options).
    pub hlen: usize,
    /// The later pieces' header length (copied options only, padded).
    pub later_hlen: usize,
    /// Payload bytes of the IPv4 packet.
    pub payload: usize,
    /// Payload bytes per piece but the last (a multiple of 8).
    pub step: usize,
}

impl Plan {
    /// How to split `ip` (an IPv4 packet) to fit `mtu`; None when it
    /// fits already. An `Err` names why it cannot be split.
    pub fn new(ip: &[u8], mtu: u16) -> Result<Option<Plan>, DropReason> {
        // Bridged frames reach here with only their Ethernet header parsed.
        let p = ipv4::Packet::new_checked(ip).map_err(|_| DropReason::Ip4FragNotIp4)?;
        let total = usize::from(p.total_len());
        let mtu = usize::from(mtu);
        if total <= mtu {
            return Ok(None);
        }
        if p.dont_frag() {
            return Err(DropReason::Ip4FragDontFragment);
        }
        let hlen = p.header_len();
        let later_hlen = ipv4::HEADER_LEN + copied_options(p.options(), &mut [0; 40]);
        // Every piece carries at least 8 payload bytes; the first has the bigger header.
        let step = mtu.saturating_sub(hlen.max(later_hlen)) & !7;
        if step == 0 {
            return Err(DropReason::Ip4FragTooMany);
        }
        let plan = Plan {
            hlen,
            later_hlen,
            payload: total - hlen,
            step,
        };
        if plan.pieces() > MAX_PIECES {
            return Err(DropReason::Ip4FragTooMany);
        }
        Ok(Some(plan))
    }

    pub fn pieces(&self) -> usize {
        self.payload.div_ceil(self.step)
    }

    /// Piece k's payload: (offset in the original payload, length).
    pub fn piece(&self, k: usize) -> (usize, usize) {
        let off = k * self.step;
        (off, self.step.min(self.payload - off))
    }
}

/// Writes the options whose "copied" flag (bit 7 of the type) is set into `out`,
/// padded with EOL to a multiple of 4; returns the padded length.
pub fn copied_options(opts: &[u8], out: &mut [u8; 40]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < opts.len() {
        let t = opts[i];
        let len = match t {
            0 => break,
            1 => 1,
            _ => usize::from(opts.get(i + 1).copied().unwrap_or(0)).max(2),
        };
        let end = (i + len).min(opts.len());
        if t & 0x80 != 0 && n + (end - i) <= out.len() {
            out[n..n + end - i].copy_from_slice(&opts[i..end]);
            n += end - i;
        }
        i = end;
    }
    let padded = n.div_ceil(4) * 4;
    out[n..padded].fill(0);
    padded
}

/// Writes piece k's IPv4 header into `hdr` (room for `plan.hlen` bytes) from the
/// original header `orig`: length, fragment field (offsets add to the original's, MF
/// set on every piece but the original's last), options, checksum. Returns its length.
fn write_header(orig: &[u8], plan: &Plan, k: usize, hdr: &mut [u8]) -> usize {
    let o = ipv4::Packet::new_unchecked(orig);
    let (off, len) = plan.piece(k);
    let hlen = if k == 0 {
        hdr[..plan.hlen].copy_from_slice(&orig[..plan.hlen]);
        plan.hlen
    } else {
        hdr[..ipv4::HEADER_LEN].copy_from_slice(&orig[..ipv4::HEADER_LEN]);
        let mut opts = [0u8; 40];
        let n = copied_options(o.options(), &mut opts);
        hdr[ipv4::HEADER_LEN..ipv4::HEADER_LEN + n].copy_from_slice(&opts[..n]);
        hdr[0] = 0x40 | u8::try_from((ipv4::HEADER_LEN + n) / 4).unwrap_or(5);
        plan.later_hlen
    };
    let last = k + 1 == plan.pieces();
    let mf = if last { o.more_frags() } else { true };
    let units = (usize::from(o.frag_offset()) + off) / 8;
    let field = u16::try_from(units).unwrap_or(0x1fff) & 0x1fff | if mf { 0x2000 } else { 0 };
    let total = u16::try_from(hlen + len).unwrap_or(u16::MAX);
    hdr[2..4].copy_from_slice(&total.to_be_bytes());
    hdr[6..8].copy_from_slice(&field.to_be_bytes());
    hdr[10..12].fill(0);
    let c = !checksum::fold(checksum::header_sum(&hdr[..hlen]));
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    hlen
}

/// Splits `f` (IPv4 at `l3`, bigger than `mtu`) into `out`, in order. `copy` makes a
/// buffer holding the bytes given (None when the pool is empty). On error nothing is
/// left in `out` and the original comes back with the reason.
pub fn split<F: Frame>(
    mut f: F,
    l3: usize,
    plan: &Plan,
    mut copy: impl FnMut(&[u8]) -> Option<F>,
    out: &mut Vec<F>,
) -> Result<(), (F, DropReason)> {
    let mut l2 = [0u8; ethernet::HEADER_LEN + 4];
    let mut orig = [0u8; 60];
    {
        let d = f.data();
        l2[..l3].copy_from_slice(&d[..l3]);
        orig[..plan.hlen].copy_from_slice(&d[l3..l3 + plan.hlen]);
    }
    let pieces = plan.pieces();
    let payload_at = l3 + plan.hlen;
    for k in 0..pieces - 1 {
        let (off, len) = plan.piece(k);
        let hlen = if k == 0 { plan.hlen } else { plan.later_hlen };
        // The copy starts where this piece's headers would sit in front of its
        // payload (never before the frame: off >= 8 for k >= 1, and later headers
        // are not longer than the first), then the headers are written over it.
        let start = payload_at + off - l3 - hlen;
        let Some(mut g) = copy(&f.data()[start..payload_at + off + len]) else {
            out.clear();
            return Err((f, DropReason::Ip4FragNoBuffer));
        };
        let d = g.data_mut();
        d[..l3].copy_from_slice(&l2[..l3]);
        write_header(&orig, plan, k, &mut d[l3..]);
        out.push(g);
    }
    // The original becomes the last piece: its front is cut to the headers' room.
    let (off, len) = plan.piece(pieces - 1);
    let start = payload_at + off - l3 - plan.later_hlen;
    if !f.strip(start) || !f.set_len(l3 + plan.later_hlen + len) {
        out.clear();
        return Err((f, DropReason::Ip4FragNoBuffer));
    }
    let d = f.data_mut();
    d[..l3].copy_from_slice(&l2[..l3]);
    write_header(&orig, plan, pieces - 1, &mut d[l3..]);
    out.push(f);
    Ok(())
}

/// Counts one datagram split as ip4-fragment's work (it runs outside the stage loop,
/// called where the frame is sent).
pub fn count_split(c: &crate::pipeline::WorkerCounters, t0: u64) {
    use crate::pipeline::counters::add;
    let sc = &c.stages[crate::pipeline::StageId::Ip4Fragment.index()];
    add(&sc.packets, 1);
    add(&sc.calls, 1);
    add(&sc.cycles, crate::dpdk::rdtsc().wrapping_sub(t0));
}

/// ip4-fragment on output: `f` is bigger than `port`'s MTU. Split when it is IPv4
/// without DF; the pieces go out in order.
#[cold]
pub fn on_output<F: Frame, P: crate::pipeline::PortIo<Frame = F>>(
    out: &mut crate::pipeline::tx::Out<'_, F, P>,
    port: u16,
    mtu: u16,
    f: F,
    trace: u32,
) {
    use crate::pipeline::{Next, StageId, TraceDetail};
    let t0 = crate::dpdk::rdtsc();
    let plan = match l3_offset(f.data()) {
        None => Err(DropReason::Ip4FragNotIp4),
        Some(l3) => Plan::new(&f.data()[l3..], mtu).map(|p| p.map(|p| (l3, p))),
    };
    let (l3, plan) = match plan {
        // A tagged frame that fits after all.
        Ok(None) => return out.queue(port, f),
        Ok(Some(lp)) => lp,
        Err(r) => {
            out.drop(f, StageId::Ip4Fragment, r);
            return;
        }
    };
    let mut pieces = std::mem::take(&mut out.tx.pieces);
    match split(f, l3, &plan, |d| out.io.copy_frame(d), &mut pieces) {
        Ok(()) => {
            let n = pieces.len();
            crate::pipeline::counters::add(&out.counters.replicated, n as u64 - 1);
            out.trace(
                trace,
                StageId::Ip4Fragment,
                Next::Port(port),
                TraceDetail::Fragment {
                    pieces: u16::try_from(n).unwrap_or(u16::MAX),
                    mtu,
                },
            );
            #[cfg(debug_assertions)]
            crate::pipeline::registry::seen::record(StageId::Ip4Fragment, StageId::Tx);
            for g in pieces.drain(..) {
                out.queue(port, g);
            }
        }
        Err((f, r)) => out.drop(f, StageId::Ip4Fragment, r),
    }
    out.tx.pieces = pieces;
    count_split(out.counters, t0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::memory::MemFrame;

    /// An Ethernet frame with a UDP datagram of `payload` bytes (DF clear), options
    /// `opts` in its header.
    fn datagram(payload: usize, opts: &[u8], frag_field: u16) -> Vec<u8> {
        let hlen = 20 + opts.len();
        let mut d = vec![0u8; 14 + hlen + payload];
        d[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut d[14..];
        ip[0] = 0x40 | u8::try_from(hlen / 4).unwrap();
        let total = u16::try_from(hlen + payload).unwrap();
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&frag_field.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 244, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 244, 1, 3]);
        ip[20..hlen].copy_from_slice(opts);
        for (i, b) in ip[hlen..].iter_mut().enumerate() {
            *b = u8::try_from(i % 251).unwrap();
        }
        d
    }

    fn split_all(d: &[u8], mtu: u16) -> Vec<Vec<u8>> {
        let plan = Plan::new(&d[14..], mtu).unwrap().unwrap();
        let mut out = Vec::new();
        split(
            MemFrame::from_bytes(d),
            14,
            &plan,
            |b| Some(MemFrame::from_bytes(b)),
            &mut out,
        )
        .map_err(|(_, r)| r)
        .unwrap();
        out.iter().map(|f| f.data().to_vec()).collect()
    }

    /// Reassembles pieces (any order) as a receiver would: (payload, last MF).
    fn reassemble(pieces: &[Vec<u8>]) -> Vec<u8> {
        let mut whole = Vec::new();
        for p in pieces {
            let ip = ipv4::Packet::new_checked(&p[14..]).unwrap();
            assert!(ip.verify_checksum());
            let off = usize::from(ip.frag_offset());
            let pl = ip.payload();
            if whole.len() < off + pl.len() {
                whole.resize(off + pl.len(), 0);
            }
            whole[off..off + pl.len()].copy_from_slice(pl);
        }
        whole
    }

    #[test]
    fn a_big_datagram_splits_in_order_and_reassembles() {
        let d = datagram(7980, &[], 0);
        let pieces = split_all(&d, 1500);
        assert_eq!(pieces.len(), 6, "8000 bytes in 1480-byte steps");
        let mut expect_off = 0;
        for (k, p) in pieces.iter().enumerate() {
            let ip = ipv4::Packet::new_checked(&p[14..]).unwrap();
            assert!(usize::from(ip.total_len()) <= 1500);
            assert_eq!(p.len(), 14 + usize::from(ip.total_len()));
            assert_eq!(ip.ident(), 0x1234);
            assert_eq!(
                usize::from(ip.frag_offset()),
                expect_off,
                "piece {k} in order"
            );
            assert_eq!(ip.more_frags(), k + 1 < pieces.len());
            assert_eq!(&p[..14], &d[..14], "Ethernet header kept");
            expect_off += ip.payload().len();
        }
        assert_eq!(reassemble(&pieces), d[34..].to_vec());
    }

    #[test]
    fn a_fragment_splits_further_keeping_its_offset_and_more_fragments() {
        // A middle fragment at offset 1480, MF set: its pieces continue from there and
        // all keep MF (the datagram goes on after them).
        let d = datagram(4000, &[], 0x2000 | 185);
        let pieces = split_all(&d, 1500);
        let first = ipv4::Packet::new_checked(&pieces[0][14..]).unwrap();
        assert_eq!(first.frag_offset(), 1480);
        for p in &pieces {
            assert!(ipv4::Packet::new_checked(&p[14..]).unwrap().more_frags());
        }
        // The last fragment of a datagram: the last piece clears MF.
        let d = datagram(4000, &[], 185);
        let pieces = split_all(&d, 1500);
        let last = pieces.last().unwrap();
        assert!(!ipv4::Packet::new_checked(&last[14..]).unwrap().more_frags());
    }

    #[test]
    fn later_pieces_carry_only_copied_options() {
        // Record route (7, not copied) and a copied option (0x94 router alert), 12 bytes.
        let opts = [7, 7, 4, 0, 0, 0, 0, 0x94, 4, 0, 0, 1];
        let d = datagram(3000, &opts, 0);
        let pieces = split_all(&d, 1500);
        let first = ipv4::Packet::new_checked(&pieces[0][14..]).unwrap();
        assert_eq!(first.options(), &opts);
        for p in &pieces[1..] {
            let ip = ipv4::Packet::new_checked(&p[14..]).unwrap();
            assert_eq!(ip.options(), &[0x94, 4, 0, 0]);
        }
        assert_eq!(reassemble(&pieces), d[14 + 32..].to_vec());
    }

    #[test]
    fn what_cannot_be_split_is_refused_by_name() {
        let mut d = datagram(3000, &[], 0x4000);
        assert_eq!(
            Plan::new(&d[14..], 1500),
            Err(DropReason::Ip4FragDontFragment)
        );
        d[20] = 0;
        assert_eq!(Plan::new(&d[14..], 24), Err(DropReason::Ip4FragTooMany));
        assert_eq!(Plan::new(&d[14..], 36), Err(DropReason::Ip4FragTooMany));
        assert!(Plan::new(&d[14..], 60).unwrap().is_some(), "76 pieces");
        assert_eq!(Plan::new(&d[14..40], 1500), Err(DropReason::Ip4FragNotIp4));
        assert_eq!(Plan::new(&d[14..], 3020), Ok(None), "fits");
        let plan = Plan::new(&d[14..], 1500).unwrap().unwrap();
        let mut out = Vec::new();
        let r = split(MemFrame::from_bytes(&d[..]), 14, &plan, |_| None, &mut out);
        assert!(matches!(r, Err((_, DropReason::Ip4FragNoBuffer))));
        assert!(out.is_empty());
    }

    #[test]
    fn vlan_tagged_and_non_ip_frames() {
        let mut d = vec![0u8; 40];
        d[12..14].copy_from_slice(&[0x81, 0x00]);
        d[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(l3_offset(&d), Some(18));
        d[16..18].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(l3_offset(&d), None);
        assert_eq!(l3_offset(&d[..10]), None);
    }
}

//! The af_packet PMD's ring geometry. The kernel hands an af_packet socket whole
//! datagrams (DPDK joins its queues' sockets in a fanout group with
//! PACKET_FANOUT_FLAG_DEFRAG, so fragments are reassembled before the dataplane sees
//! them), and it cuts any frame to the ring's frame size. DPDK's default frame
//! (2 048 bytes) would make every reassembled datagram beyond ~1 980 bytes arrive
//! cut short; podpath sizes the ring frames and their buffers from
//! `dataplane.max_frame` instead.

/// Where the kernel puts a frame's first byte in a TPACKET_V2 ring slot:
/// TPACKET_ALIGN(TPACKET2_HDRLEN (52) + 16) - ETH_HLEN.
const MAC_OFFSET: u32 = 66;
/// What the PMD subtracts from the frame size to size its copy into an mbuf
/// (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)); it refuses a pool with less room.
const PMD_OVERHEAD: u32 = 32;
const PAGE: u32 = 4096;
/// The largest frame size whose buffers fit an mbuf's 16-bit data room.
pub const MAX_RING_FRAME: u32 = 61_440;
/// The largest `max_frame` the rings can take.
pub const MAX_FRAME_LIMIT: u32 = MAX_RING_FRAME - MAC_OFFSET;

/// True for an af_packet device's arguments (`net_af_packet0,iface=...`).
pub fn is_af_packet(devargs: &str) -> bool {
    devargs.starts_with("net_af_packet")
}

/// The ring frame (and block) size that takes frames of up to `max_frame` bytes:
/// one frame per block, whole pages.
pub fn ring_frame(max_frame: u32) -> u32 {
    (max_frame + MAC_OFFSET).div_ceil(PAGE) * PAGE
}

/// The largest frame a ring of `ring_frame` bytes delivers whole.
pub fn frame_capacity(ring_frame: u32) -> u32 {
    ring_frame.saturating_sub(MAC_OFFSET)
}

/// The data room (headroom included) an mbuf needs for a ring frame size.
pub fn data_room(ring_frame: u32, headroom: u32) -> u32 {
    ring_frame - PMD_OVERHEAD + headroom
}

/// The value of `key=` in a device's arguments.
fn arg<'a>(devargs: &'a str, key: &str) -> Option<&'a str> {
    devargs
        .split(',')
        .skip(1)
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The device arguments to probe with, and the ring frame size they give: podpath's
/// geometry added where the user gave none (`framesz`/`blocksz` given are kept,
/// and checked against what the buffers can take), and one queue pair per queue
/// the port needs (`qpairs`) unless given.
pub fn devargs(devargs: &str, max_frame: u32, queues: u16) -> Result<(String, u32), String> {
    let parse = |key: &str| -> Result<Option<u32>, String> {
        arg(devargs, key)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{key}={v:?} is not a number"))
            })
            .transpose()
    };
    let (framesz, blocksz) = (parse("framesz")?, parse("blocksz")?);
    let frame = framesz.unwrap_or_else(|| ring_frame(max_frame));
    if frame > ring_frame(max_frame) {
        return Err(format!(
            "framesz={frame} takes frames up to {} bytes, beyond dataplane.max_frame ({max_frame}): raise max_frame instead (the buffers are sized from it)",
            frame_capacity(frame)
        ));
    }
    let mut out = devargs.to_owned();
    if arg(devargs, "qpairs").is_none() && queues > 1 {
        out.push_str(&format!(",qpairs={queues}"));
    }
    if framesz.is_none() {
        out.push_str(&format!(",framesz={frame}"));
    }
    if blocksz.is_none() {
        out.push_str(&format!(",blocksz={}", frame.div_ceil(PAGE) * PAGE));
    }
    Ok((out, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_takes_max_frame_and_its_buffers_fit_an_mbuf() {
        for max in [1514, 9216, 16_000, MAX_FRAME_LIMIT] {
            let f = ring_frame(max);
            assert_eq!(f % PAGE, 0);
            assert!(frame_capacity(f) >= max);
            assert!(data_room(f, 128) <= u32::from(u16::MAX), "{max}");
        }
        assert_eq!(ring_frame(9216), 12_288);
        assert!(data_room(ring_frame(MAX_FRAME_LIMIT + 1), 128) > u32::from(u16::MAX));
    }

    #[test]
    fn devargs_gain_the_geometry_unless_given() {
        let (d, f) = devargs("net_af_packet0,iface=vp-a,qpairs=2", 9216, 4).unwrap();
        assert_eq!(
            d,
            "net_af_packet0,iface=vp-a,qpairs=2,framesz=12288,blocksz=12288"
        );
        assert_eq!(f, 12_288);
        let (d, f) = devargs("net_af_packet1,iface=x,framesz=2048", 9216, 2).unwrap();
        assert_eq!(
            d,
            "net_af_packet1,iface=x,framesz=2048,qpairs=2,blocksz=4096"
        );
        assert_eq!(f, 2048);
        assert!(devargs("net_af_packet1,iface=x,framesz=65536", 9216, 1)
            .unwrap_err()
            .contains("max_frame"));
        assert!(devargs("net_af_packet1,iface=x,framesz=big", 9216, 1)
            .unwrap_err()
            .contains("not a number"));
        assert!(is_af_packet("net_af_packet3,iface=eth0"));
        assert!(!is_af_packet("net_tap0,iface=x"));
    }
}

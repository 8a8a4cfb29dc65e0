//! The connection table: one per worker, never locked. An entry holds both directions
//! of a connection (original and reply 5-tuples, both keys of the index), the TCP state
//! or the UDP/ICMP "replied" flag, and an expiry. Expiry is driven by a timer wheel of
//! one-second slots that each poll advances by a bounded amount of work, so a mass
//! expiry never stalls the worker. When the table is full, an unassured entry near
//! its expiry is evicted (early drop); if none is found the new connection is refused.
//!
//! Memory: an entry is 52 bytes in the slab, and each of its two keys a signature
//! and a value in the index (`index.rs`, rte_hash's bucket layout, half full), under
//! 100 bytes per connection in all (`Conntrack::bytes_per_entry`).
//!
//! The slab is the table's truth and can live in a file (`state`): every entry says
//! by itself whether it is live, its tuples, state and expiry. The index, the timer
//! wheel and the free list are rebuilt from it, so a dataplane restarted after
//! `kill -9` resumes every connection the dead one tracked (`Conntrack::restore`).
use crate::dpdk::region::Region;

pub mod index;
pub mod state;

use index::Index;

// repr(C) (plain_struct): entries holding tuples are read back by the next process
// (`state`).
crate::plain_struct! {
/// One direction of a connection. For ICMP echo, `sport` is the identifier and
/// `dport` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}
}

impl Tuple {
    /// The same tuple seen from the other side.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// TCP connection states, as Linux's conntrack names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    None,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    /// Every state, in the order of their stored values.
    const ALL: [TcpState; 9] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
    ];

    /// The state stored as `raw` (an unknown value, from a damaged file, is None).
    pub fn from_raw(raw: u8) -> TcpState {
        Self::ALL
            .get(usize::from(raw))
            .copied()
            .unwrap_or(TcpState::None)
    }

    /// Whether `raw` is a stored state at all.
    fn is_raw(raw: u8) -> bool {
        usize::from(raw) < Self::ALL.len()
    }

    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

/// Timeouts in seconds; Linux's defaults.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP before a reply.
    pub udp: u32,
    /// UDP once replied (a stream).
    pub udp_stream: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 432_000,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
        }
    }
}

impl Timeouts {
    fn tcp(&self, s: TcpState) -> u32 {
        match s {
            TcpState::None | TcpState::SynSent => self.tcp_syn_sent,
            TcpState::SynRecv => self.tcp_syn_recv,
            TcpState::Established => self.tcp_established,
            TcpState::FinWait => self.tcp_fin_wait,
            TcpState::CloseWait => self.tcp_close_wait,
            TcpState::LastAck => self.tcp_last_ack,
            TcpState::TimeWait => self.tcp_time_wait,
            TcpState::Close => self.tcp_close,
        }
    }
}

/// Which way a packet goes in its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Orig,
    Reply,
}

const F_SEEN_REPLY: u8 = 1;
const F_ASSURED: u8 = 2;
pub(crate) const F_DEAD: u8 = 4;
/// The original direction sent the FIN (so the closing side is known).
const F_FIN_ORIG: u8 = 8;
const F_FIN_REPLY: u8 = 16;
/// A Service connection (destination translated), as opposed to masquerade.
const F_DNAT: u8 = 32;
/// A Service connection whose client source was also translated (NodePort, policy
/// Cluster): replies come back to the node.
const F_MASQ: u8 = 64;
/// Every flag an entry can carry; anything else marks a damaged entry.
const F_KNOWN: u8 = 127;
const NIL: u32 = u32::MAX;
/// Seconds a replied UDP flow must live before it is a stream (Linux: 2 s).
const UDP_STREAM_AFTER: u32 = 2;

/// Whether a TCP segment's flags are a combination a connection can carry: Linux's
/// `tcp_valid_flags` table over FIN, SYN, RST, ACK and URG (PSH, ECE and CWR aside):
/// SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK, FIN+ACK+URG, ACK, ACK+URG. SYN+FIN,
/// SYN+RST, FIN alone and no flags at all are not.
#[inline]
pub fn tcp_flags_valid(flags: u8) -> bool {
    // FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10, URG 0x20.
    matches!(
        flags & 0x37,
        0x02 | 0x22 | 0x12 | 0x04 | 0x14 | 0x11 | 0x31 | 0x10 | 0x30
    )
}

// repr(C) and integers only: the layout the state file holds (`state::LAYOUT`), and
// any bytes read back are a value (`Plain`); `valid` judges their meaning.
crate::plain_struct! {
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    /// Absolute expiry, in seconds of the table's clock.
    pub expires: u32,
    /// When the connection was created (UDP becomes a stream only after 2 s).
    pub born: u32,
    /// A `TcpState` (`tcp()`).
    tcp: u8,
    flags: u8,
    /// The timer-wheel slot this entry is filed in, and its neighbours there.
    slot: u16,
    next: u32,
    prev: u32,
}
}

impl Entry {
    pub fn tcp(&self) -> TcpState {
        TcpState::from_raw(self.tcp)
    }
    pub fn assured(&self) -> bool {
        self.flags & F_ASSURED != 0
    }
    pub fn seen_reply(&self) -> bool {
        self.flags & F_SEEN_REPLY != 0
    }
    /// A Service connection: the destination was translated to an endpoint.
    pub fn is_dnat(&self) -> bool {
        self.flags & F_DNAT != 0
    }
    pub fn is_masq(&self) -> bool {
        self.flags & F_MASQ != 0
    }
}

/// What `Conntrack::resume` made of a state file's entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Connections tracked again, as the last process left them.
    pub restored: usize,
    /// Entries that expired while no process ran.
    pub expired: usize,
    /// Entries whose bytes are no connection (a torn write, damage): dropped.
    pub invalid: usize,
    /// Entries naming a tuple another restored entry holds: dropped.
    pub duplicate: usize,
    /// Seconds added to every time, from the old clock to this process's.
    pub shift: i64,
}

/// Why a connection could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Full, and no unassured entry could be evicted.
    Full,
    /// One of the tuples is already tracked.
    Exists,
}

/// What the table counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct CtStats {
    pub inserted: u64,
    pub expired: u64,
    pub early_dropped: u64,
    pub refused_full: u64,
}

pub struct Conntrack {
    index: Index,
    /// Endpoints of translated (DNAT) connections, ever: their replies must reach
    /// `lb` even once the endpoint left its Service (the Service prefilter).
    dnat_sources: crate::services::prefilter::AddrFilter,
    /// Entries, in anonymous memory or the state file's mapping; `used` of them
    /// have been handed out.
    slab: Region<Entry>,
    used: usize,
    /// The state file's header (clock stamp, high-water mark), or an anonymous one.
    hdr: Region<state::Header>,
    /// The state file, kept open: its lock says this process owns it.
    _file: Option<std::fs::File>,
    free: Vec<u32>,
    live: usize,
    /// The limit in force, at most `reserved` (what was allocated at start).
    capacity: usize,
    reserved: usize,
    wheel: Vec<u32>,
    /// The wheel's position: every slot before it (in seconds) has been expired.
    cursor: u32,
    /// Entry being walked in the current slot when a poll ran out of budget.
    walking: u32,
    pub timeouts: Timeouts,
    pub stats: CtStats,
}

const WHEEL_SLOTS: usize = 1024;

/// Reads the tuple an index value names (the slab is the index's key store).
#[inline(always)]
fn key_in(slab: &Region<Entry>) -> impl Fn(u32, Dir) -> Tuple + '_ {
    move |i, d| {
        let e = &slab[i as usize];
        match d {
            Dir::Orig => e.orig,
            Dir::Reply => e.reply,
        }
    }
}

impl Conntrack {
    /// Brings the index bucket of `t` towards the cache: a stage calls it for its
    /// whole vector before it looks any up, so the misses overlap.
    #[inline(always)]
    pub fn prefetch(&self, h: &index::Hash) {
        self.index.prefetch(h);
    }

    /// A tuple's index hash, computed once for the prefetches and the lookup.
    #[inline(always)]
    pub fn hash(&self, t: &Tuple) -> index::Hash {
        self.index.hash(t)
    }

    /// Brings the entry a hash probably belongs to towards the cache (after
    /// `prefetch`: its bucket names it).
    #[inline(always)]
    pub fn prefetch_entry(&self, h: &index::Hash) {
        if let Some(i) = self.index.candidate(h) {
            if (i as usize) < self.used {
                crate::dpdk::prefetch_ref(&self.slab[i as usize]);
            }
        }
    }

    /// Endpoints this table's translated connections were sent to (the Service
    /// prefilter asks it about a packet's source).
    #[inline]
    pub fn dnat_sources(&self) -> &crate::services::prefilter::AddrFilter {
        &self.dnat_sources
    }

    /// A table for `capacity` connections, everything reserved up front.
    pub fn new(capacity: usize, timeouts: Timeouts, now: u32) -> Conntrack {
        Self::with_reserve(capacity, capacity, timeouts, now)
    }

    /// A table for `capacity` connections with room reserved for `reserved` (so the
    /// limit can be raised at run time without allocating on the worker; memory the
    /// table never fills is only address space).
    pub fn with_reserve(
        capacity: usize,
        reserved: usize,
        timeouts: Timeouts,
        now: u32,
    ) -> Conntrack {
        let reserved = reserved.max(capacity);
        // Address space only until used, as a Vec's reservation was; failing to
        // map it is failing to allocate.
        let slab = Region::anonymous(reserved).expect("connection table memory");
        let hdr = Region::anonymous(1).expect("connection table header");
        Self::over(capacity, reserved, timeouts, now, slab, hdr, None)
    }

    /// A table over `slab` (`reserved` entries, the first `hdr.used` handed out)
    /// with nothing indexed yet.
    fn over(
        capacity: usize,
        reserved: usize,
        timeouts: Timeouts,
        now: u32,
        slab: Region<Entry>,
        hdr: Region<state::Header>,
        file: Option<std::fs::File>,
    ) -> Conntrack {
        Conntrack {
            index: Index::with_capacity(reserved.saturating_mul(2)),
            dnat_sources: Default::default(),
            slab,
            used: 0,
            hdr,
            _file: file,
            free: Vec::with_capacity(reserved),
            live: 0,
            capacity,
            reserved,
            wheel: vec![NIL; WHEEL_SLOTS],
            cursor: now,
            walking: NIL,
            timeouts,
            stats: CtStats::default(),
        }
    }

    /// The table kept in a state file (`state::open`): the entries it holds are
    /// tracked again, their times shifted onto this process's clock (`now`), and the
    /// index, wheel and free list rebuilt. Bytes that are no connection are dropped
    /// and counted, never trusted: the slab is the only thing read back.
    pub fn resume(
        capacity: usize,
        timeouts: Timeouts,
        now: u32,
        st: state::Opened,
    ) -> (Conntrack, Restored) {
        let reserved = st.slab.len();
        let used = usize::try_from(st.hdr[0].used).unwrap_or(0).min(reserved);
        let h = st.hdr[0];
        let mut c = Self::over(
            capacity,
            reserved,
            timeouts,
            now,
            st.slab,
            st.hdr,
            Some(st.file),
        );
        c.used = used;
        let mut r = Restored::default();
        // Where the old clock would stand now, from its last stamp and the wall time
        // since; the difference to ours moves every expiry (two processes' TSC rates
        // are calibrated apart, and the clock may not be the TSC one day).
        if h.wall_ms != 0 {
            let gone = state::wall_ms().saturating_sub(h.wall_ms) / 1000;
            let theirs = i64::try_from(h.clock_secs.saturating_add(gone)).unwrap_or(i64::MAX);
            r.shift = i64::from(now) - theirs;
        }
        let longest = [
            timeouts.tcp_established,
            timeouts.tcp_syn_sent,
            timeouts.udp_stream,
            timeouts.icmp,
            Timeouts::default().tcp_established,
        ]
        .into_iter()
        .max()
        .unwrap_or(u32::MAX);
        let shifted = |t: u32| {
            u32::try_from((i64::from(t) + r.shift).clamp(0, i64::from(u32::MAX))).unwrap_or(0)
        };
        for i in 0..used {
            let mut e = c.slab[i];
            let idx = u32::try_from(i).unwrap_or(NIL);
            if e.flags & F_DEAD != 0 {
                c.free.push(idx);
                continue;
            }
            let ok = e.flags & !F_KNOWN == 0
                && matches!(e.orig.proto, 1 | 6 | 17)
                && e.reply.proto == e.orig.proto
                && TcpState::is_raw(e.tcp)
                && (e.orig.proto == 6 || e.tcp == 0);
            e.expires = shifted(e.expires);
            e.born = shifted(e.born).min(now);
            let verdict = if !ok || e.expires > now.saturating_add(longest).saturating_add(1) {
                &mut r.invalid
            } else if e.expires <= now {
                &mut r.expired
            } else if c.index.get(&e.orig, key_in(&c.slab)).is_some()
                || c.index.get(&e.reply, key_in(&c.slab)).is_some()
            {
                &mut r.duplicate
            } else {
                e.next = NIL;
                e.prev = NIL;
                c.slab[i] = e;
                c.index.insert(e.orig, idx, Dir::Orig, key_in(&c.slab));
                c.index.insert(e.reply, idx, Dir::Reply, key_in(&c.slab));
                if e.reply.src != e.orig.dst {
                    c.dnat_sources.insert(e.reply.src);
                }
                c.link(idx);
                c.live += 1;
                r.restored += 1;
                continue;
            };
            *verdict += 1;
            c.slab[i].flags = F_DEAD;
            c.free.push(idx);
        }
        state::stamp(&mut c.hdr[0], now);
        (c, r)
    }

    /// The memory a table reserving `reserved` connections takes once it has filled
    /// its reservation (its pages are touched as keys land all over the index): the
    /// slab, the index (two keys per connection at half load, in 64-byte buckets of
    /// 8, rounded to a power of two), the free list. A soak's resident
    /// memory rises towards this and stops (docs/reliability.md).
    pub fn reservation_bytes(reserved: usize) -> usize {
        reserved.saturating_mul(std::mem::size_of::<Entry>() + 4)
            + Index::bytes_for(reserved.saturating_mul(2))
            + 4 * WHEEL_SLOTS
    }

    /// Approximate bytes one connection costs (slab entry and two index slots).
    pub fn bytes_per_entry() -> usize {
        // Two keys, each half of an 8-slot 64-byte bucket's share at half load.
        std::mem::size_of::<Entry>() + 2 * 16
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes the limit (at most what was reserved; a lower one than the entries
    /// now live refuses new connections until enough have gone, nothing is evicted
    /// for it). False, and nothing changed, beyond the reservation.
    pub fn set_capacity(&mut self, capacity: usize) -> bool {
        if capacity > self.reserved {
            return false;
        }
        self.capacity = capacity;
        true
    }

    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// The entry a tuple belongs to, with the direction it names.
    #[inline]
    pub fn lookup(&self, t: &Tuple, now: u32) -> Option<(u32, Dir)> {
        self.lookup_hashed(t, &self.index.hash(t), now)
    }

    /// `lookup`, with the tuple's hash already computed (`hash`).
    #[inline]
    pub fn lookup_hashed(&self, t: &Tuple, h: &index::Hash, now: u32) -> Option<(u32, Dir)> {
        let (i, d) = self.index.get_hashed(t, h, key_in(&self.slab))?;
        let e = &self.slab[i as usize];
        (e.flags & F_DEAD == 0 && e.expires > now).then_some((i, d))
    }

    pub fn entry(&self, i: u32) -> &Entry {
        &self.slab[i as usize]
    }

    /// The live entry `t` belongs to, unless `flags` open a new connection over a
    /// finished one: a SYN (without ACK) in the original direction of an entry in
    /// TIME_WAIT or CLOSE. Like Linux, that entry is removed and the packet is new
    /// (it gets a fresh translation: another NAT port, the endpoint the Service
    /// picks now), rather than continuing the old connection's state and choice.
    #[inline]
    pub fn lookup_or_reopen(&mut self, t: &Tuple, tcp_flags: u8, now: u32) -> Option<(u32, Dir)> {
        let h = self.index.hash(t);
        self.lookup_or_reopen_hashed(t, &h, tcp_flags, now)
    }

    /// `lookup_or_reopen`, with the tuple's hash already computed.
    #[inline]
    pub fn lookup_or_reopen_hashed(
        &mut self,
        t: &Tuple,
        h: &index::Hash,
        tcp_flags: u8,
        now: u32,
    ) -> Option<(u32, Dir)> {
        use crate::wire::tcp::flags::{ACK, SYN};
        let (i, d) = self.lookup_hashed(t, h, now)?;
        let e = &self.slab[i as usize];
        let finished = matches!(e.tcp(), TcpState::TimeWait | TcpState::Close);
        if finished && d == Dir::Orig && tcp_flags & (SYN | ACK) == SYN {
            self.remove(i);
            return None;
        }
        Some((i, d))
    }

    /// Is this tuple (either direction of any live entry) in use?
    pub fn in_use(&self, t: &Tuple, now: u32) -> bool {
        self.lookup(t, now).is_some()
    }

    /// Files entry `i` in the wheel slot of its expiry.
    fn link(&mut self, i: u32) {
        let slot = self.slab[i as usize].expires as usize % WHEEL_SLOTS;
        let head = self.wheel[slot];
        let e = &mut self.slab[i as usize];
        e.slot = u16::try_from(slot).unwrap_or(0);
        e.next = head;
        e.prev = NIL;
        if head != NIL {
            self.slab[head as usize].prev = i;
        }
        self.wheel[slot] = i;
    }

    /// Takes entry `i` out of its wheel slot (O(1): the lists are doubly linked).
    fn unlink(&mut self, i: u32) {
        let Entry {
            slot, next, prev, ..
        } = self.slab[i as usize];
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else {
            self.wheel[usize::from(slot)] = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        }
        if self.walking == i {
            self.walking = next;
        }
    }

    /// Tracks a new connection: `orig` as the first packet showed it, `reply` as the
    /// answer will show it (after NAT, the translated tuple reversed).
    pub fn insert(&mut self, orig: Tuple, reply: Tuple, now: u32) -> Result<u32, InsertError> {
        let ho = self.index.hash(&orig);
        if self.lookup_hashed(&orig, &ho, now).is_some() {
            return Err(InsertError::Exists);
        }
        self.insert_missed(orig, &ho, reply, now)
    }

    /// `insert`, for a stage that just looked `orig` up (with hash `ho`) and missed:
    /// only `reply` is checked. Each tuple is hashed once, for the check and the
    /// index.
    pub fn insert_missed(
        &mut self,
        orig: Tuple,
        ho: &index::Hash,
        reply: Tuple,
        now: u32,
    ) -> Result<u32, InsertError> {
        let hr = self.index.hash(&reply);
        // Absent from the index (not only expired): inserted without a search.
        let reply_key = self.index.get_hashed(&reply, &hr, key_in(&self.slab));
        if let Some((k, _)) = reply_key {
            let e = &self.slab[k as usize];
            if e.flags & F_DEAD == 0 && e.expires > now {
                return Err(InsertError::Exists);
            }
        }
        if self.live >= self.capacity && !self.early_drop(now) {
            self.stats.refused_full += 1;
            return Err(InsertError::Full);
        }
        let timeout = match orig.proto {
            6 => self.timeouts.tcp_syn_sent,
            17 => self.timeouts.udp,
            _ => self.timeouts.icmp,
        };
        let e = Entry {
            orig,
            reply,
            expires: now.saturating_add(timeout.max(1)),
            born: now,
            tcp: if orig.proto == 6 {
                TcpState::SynSent as u8
            } else {
                TcpState::None as u8
            },
            flags: 0,
            slot: 0,
            next: NIL,
            prev: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = e;
                i
            }
            None => {
                // The reservation bounds `capacity`, so `used < reserved` here.
                let i = self.used;
                self.slab[i] = e;
                self.used += 1;
                self.hdr[0].used = self.used as u64;
                u32::try_from(i).unwrap_or(NIL)
            }
        };
        // Stale keys of expired-but-unswept entries give way.
        self.index
            .insert_hashed(orig, ho, i, Dir::Orig, key_in(&self.slab));
        if reply_key.is_none() && reply != orig {
            self.index.insert_absent(reply, &hr, i, Dir::Reply);
        } else {
            self.index
                .insert_hashed(reply, &hr, i, Dir::Reply, key_in(&self.slab));
        }
        if reply.src != orig.dst {
            self.dnat_sources.insert(reply.src);
        }
        self.link(i);
        self.live += 1;
        self.stats.inserted += 1;
        Ok(i)
    }

    /// Accounts a packet of entry `i` going `dir` (TCP `flags` for TCP): advances the
    /// state and refreshes the timeout. False, and nothing changed, for a TCP segment
    /// whose flags no connection carries (`tcp_flags_valid`): the caller drops it.
    // Always inlined: called per packet by the stages; out of line it costs a call
    // and spills (callgrind: +20 instructions per packet on snat-established).
    #[inline(always)]
    pub fn update(&mut self, i: u32, dir: Dir, tcp_flags: u8, now: u32) -> bool {
        let t = &self.timeouts;
        let e = &mut self.slab[i as usize];
        if e.orig.proto == 6 && !tcp_flags_valid(tcp_flags) {
            return false;
        }
        // Stores only what changes (stale-only): an established flow's packets in
        // one second then leave its entry's line, and the state file's page, clean.
        if dir == Dir::Reply && e.flags & F_SEEN_REPLY == 0 {
            e.flags |= F_SEEN_REPLY;
        }
        let timeout = match e.orig.proto {
            6 => {
                let s = tcp_next(e.tcp(), dir, tcp_flags, &mut e.flags);
                if e.tcp != s as u8 {
                    e.tcp = s as u8;
                }
                if s == TcpState::Established && e.flags & F_ASSURED == 0 {
                    e.flags |= F_ASSURED;
                }
                t.tcp(s)
            }
            17 => {
                // Linux's rule: a replied flow still alive 2 s after it began is a
                // stream (assured, the long timeout); before that, or unreplied, the
                // short one (a DNS query and its answer are not kept for 120 s).
                if e.flags & F_ASSURED != 0 {
                    t.udp_stream
                } else if e.flags & F_SEEN_REPLY != 0
                    && now.saturating_sub(e.born) >= UDP_STREAM_AFTER
                {
                    e.flags |= F_ASSURED;
                    t.udp_stream
                } else {
                    t.udp
                }
            }
            _ => t.icmp,
        };
        let old = e.expires;
        let expires = now.saturating_add(timeout.max(1));
        if expires == old {
            return true;
        }
        e.expires = expires;
        // A shorter timeout (a reset, the end of a close) files the entry again now:
        // its old slot may be minutes away, and a closed connection would hold its
        // room (and show in the counts) until then. A longer one moves lazily.
        if e.expires < old {
            self.refile(i);
        }
        true
    }

    /// Moves entry `i` to the slot of its (earlier) expiry. Out of line: rare, and
    /// `update` stays small enough to inline into the stages.
    #[cold]
    #[inline(never)]
    fn refile(&mut self, i: u32) {
        self.unlink(i);
        self.link(i);
    }

    /// Marks entry `i` as a Service connection.
    pub fn set_dnat(&mut self, i: u32) {
        self.slab[i as usize].flags |= F_DNAT;
    }

    /// Marks entry `i` as a Service connection with its source translated too.
    pub fn set_masq(&mut self, i: u32) {
        self.slab[i as usize].flags |= F_DNAT | F_MASQ;
    }

    /// Forgets an entry now (e.g. its endpoint went away); its slot is free at once.
    pub fn remove(&mut self, i: u32) {
        let e = self.slab[i as usize];
        if e.flags & F_DEAD != 0 {
            return;
        }
        self.unindex(&e, i);
        self.unlink(i);
        self.slab[i as usize].flags |= F_DEAD;
        self.free.push(i);
        self.live -= 1;
    }

    fn unindex(&mut self, e: &Entry, i: u32) {
        for t in [e.orig, e.reply] {
            self.index.remove_if(&t, i, key_in(&self.slab));
        }
    }

    /// Removes everything.
    pub fn flush(&mut self) {
        for i in 0..self.used {
            let i = u32::try_from(i).unwrap_or(NIL);
            self.remove(i);
        }
    }

    /// Advances the wheel to `now`, expiring at most `budget` entries; returns how
    /// many it expired. Entries whose timeout moved on are re-filed in their slot.
    pub fn expire(&mut self, now: u32, mut budget: usize) -> usize {
        let mut expired = 0;
        if u64::from(now) != self.hdr[0].clock_secs {
            // Once a second: where this clock stood in wall time, so a successor
            // can shift every expiry onto its own clock (`restore`).
            state::stamp(&mut self.hdr[0], now);
        }
        // After a long pause one turn of the wheel visits every slot: skip the rest.
        let turn = u32::try_from(WHEEL_SLOTS).unwrap_or(u32::MAX);
        if self.walking == NIL && now.saturating_sub(self.cursor) > turn {
            self.cursor = now - turn + 1;
        }
        while self.cursor <= now {
            let slot = self.cursor as usize % WHEEL_SLOTS;
            let mut i = if self.walking != NIL {
                self.walking
            } else {
                self.wheel[slot]
            };
            while i != NIL {
                if budget == 0 {
                    // Resume at this entry on the next poll.
                    self.walking = i;
                    return expired;
                }
                budget -= 1;
                let e = self.slab[i as usize];
                let next = e.next;
                if e.expires <= now {
                    self.remove(i);
                    self.stats.expired += 1;
                    expired += 1;
                } else if e.expires as usize % WHEEL_SLOTS != slot {
                    // Refreshed since it was filed: move it to its new slot.
                    self.unlink(i);
                    self.link(i);
                }
                // Else it expires in a later turn of the wheel: it stays.
                i = next;
            }
            self.walking = NIL;
            self.cursor += 1;
        }
        expired
    }

    /// Evicts one unassured entry among those that expire soonest (unassured entries
    /// time out within two minutes); false if none is found within bounded work.
    fn early_drop(&mut self, _now: u32) -> bool {
        let mut looked = 0;
        for s in 0..128u32 {
            let slot = self.cursor.wrapping_add(s) as usize % WHEEL_SLOTS;
            let mut i = self.wheel[slot];
            while i != NIL && looked < 64 {
                let e = self.slab[i as usize];
                if e.flags & F_ASSURED == 0 {
                    self.remove(i);
                    self.stats.early_dropped += 1;
                    return true;
                }
                i = e.next;
                looked += 1;
            }
        }
        false
    }

    /// Visits up to `n` slab slots from `from`, removing the live entries `gone` says
    /// must go; returns where to continue (the slab length when done). Bounded work,
    /// so a worker can sweep a large table a little at every poll.
    pub fn sweep(&mut self, from: usize, n: usize, mut gone: impl FnMut(&Entry) -> bool) -> usize {
        let end = (from + n).min(self.used);
        for i in from..end {
            let e = self.slab[i];
            if e.flags & F_DEAD == 0 && gone(&e) {
                self.remove(u32::try_from(i).unwrap_or(NIL));
            }
        }
        end
    }

    pub fn slab_len(&self) -> usize {
        self.used
    }

    /// Every live entry, for `podpathctl conntrack list`.
    pub fn entries(&self, now: u32) -> impl Iterator<Item = &Entry> + '_ {
        self.slab[..self.used]
            .iter()
            .filter(move |e| e.flags & F_DEAD == 0 && e.expires > now)
    }
}

/// Linux-like TCP tracking, simplified to what NAT needs: the handshake, the two
/// FINs, RST.
fn tcp_next(s: TcpState, dir: Dir, flags: u8, ef: &mut u8) -> TcpState {
    use crate::wire::tcp::flags::{ACK, FIN, RST, SYN};
    use TcpState::*;
    if flags & RST != 0 {
        return Close;
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    match (s, dir) {
        (None | SynSent, Dir::Orig) if syn && !ack => SynSent,
        (SynSent, Dir::Reply) if syn && ack => SynRecv,
        (SynRecv, Dir::Orig) if ack && !syn => {
            if fin {
                *ef |= F_FIN_ORIG;
                FinWait
            } else {
                Established
            }
        }
        (Established, d) if fin => {
            *ef |= if d == Dir::Orig {
                F_FIN_ORIG
            } else {
                F_FIN_REPLY
            };
            FinWait
        }
        (FinWait, d) if fin => {
            let bit = if d == Dir::Orig {
                F_FIN_ORIG
            } else {
                F_FIN_REPLY
            };
            if *ef & bit == 0 {
                *ef |= bit;
                LastAck
            } else {
                FinWait
            }
        }
        (FinWait, _) if ack => CloseWait,
        (CloseWait, d) if fin => {
            *ef |= if d == Dir::Orig {
                F_FIN_ORIG
            } else {
                F_FIN_REPLY
            };
            LastAck
        }
        (LastAck, _) if ack => TimeWait,
        (TimeWait | Close, Dir::Orig) if syn && !ack => {
            // A new connection on the old tuple: nothing of the old one's close.
            *ef &= !(F_FIN_ORIG | F_FIN_REPLY | F_ASSURED | F_SEEN_REPLY);
            SynSent
        }
        (st, _) => st,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::flags::{ACK, FIN, RST, SYN};

    fn t(sport: u16, proto: u8) -> Tuple {
        Tuple {
            src: 0x0af4_0002,
            dst: 0xc0a8_4d64,
            sport,
            dport: 80,
            proto,
        }
    }

    fn nat_reply(o: Tuple, port: u16) -> Tuple {
        Tuple {
            src: o.dst,
            dst: 0xc0a8_4d0b,
            sport: o.dport,
            dport: port,
            proto: o.proto,
        }
    }

    #[test]
    fn the_reservation_is_what_the_index_and_slab_allocate() {
        for reserved in [1000, 65_536, 262_144] {
            let c = Conntrack::with_reserve(16, reserved, Timeouts::default(), 0);
            let index = c.index.allocation_size();
            let mine = Conntrack::reservation_bytes(reserved);
            let theirs = index + reserved * (std::mem::size_of::<Entry>() + 4) + 4 * WHEEL_SLOTS;
            // Exactly, but for rounding: within 1 %.
            assert!(
                mine.abs_diff(theirs) * 100 <= theirs,
                "{reserved}: {mine} vs {theirs}"
            );
        }
    }

    #[test]
    fn entry_is_small() {
        assert!(
            Conntrack::bytes_per_entry() <= 128,
            "{}",
            Conntrack::bytes_per_entry()
        );
        // 48 bytes of tuples, expiry and wheel links, and the creation time.
        assert!(std::mem::size_of::<Entry>() <= 52);
    }

    #[test]
    fn both_directions_find_the_entry() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(40000, 17);
        let r = nat_reply(o, 61000);
        let i = c.insert(o, r, 0).unwrap();
        assert_eq!(c.lookup(&o, 1), Some((i, Dir::Orig)));
        assert_eq!(c.lookup(&r, 1), Some((i, Dir::Reply)));
        assert_eq!(c.insert(o, r, 1), Err(InsertError::Exists));
    }

    #[test]
    fn a_syn_over_a_finished_connection_opens_a_new_one() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(40003, 6);
        let r = nat_reply(o, 61003);
        let i = c.insert(o, r, 0).unwrap();
        for (d, f) in [(Dir::Orig, SYN), (Dir::Reply, SYN | ACK), (Dir::Orig, ACK)] {
            c.update(i, d, f, 1);
        }
        // Live: a SYN (a retransmission, say) does not replace it, nor does any
        // packet of the reply direction or one with ACK.
        assert_eq!(c.lookup_or_reopen(&o, SYN, 2), Some((i, Dir::Orig)));
        for (d, f) in [
            (Dir::Orig, FIN | ACK),
            (Dir::Reply, ACK),
            (Dir::Reply, FIN | ACK),
            (Dir::Orig, ACK),
        ] {
            c.update(i, d, f, 2);
        }
        assert_eq!(c.entry(i).tcp(), TcpState::TimeWait);
        assert_eq!(c.lookup_or_reopen(&o, ACK, 3), Some((i, Dir::Orig)));
        assert_eq!(c.lookup_or_reopen(&r, SYN, 3), Some((i, Dir::Reply)));
        assert_eq!(c.lookup_or_reopen(&o, SYN | ACK, 3), Some((i, Dir::Orig)));
        assert_eq!(
            c.lookup_or_reopen(&o, 0, 3),
            Some((i, Dir::Orig)),
            "UDP-like flags"
        );
        // A new SYN from the same client port: the old entry goes, both directions.
        assert_eq!(c.lookup_or_reopen(&o, SYN, 3), None);
        assert_eq!(c.lookup(&o, 3), None);
        assert_eq!(c.lookup(&r, 3), None);
        assert_eq!(c.len(), 0);
        // And after a reset (CLOSE) the same.
        let i = c.insert(o, r, 4).unwrap();
        c.update(i, Dir::Orig, SYN, 4);
        c.update(i, Dir::Reply, RST, 4);
        assert_eq!(c.entry(i).tcp(), TcpState::Close);
        assert_eq!(c.lookup_or_reopen(&o, SYN, 5), None);
    }

    #[test]
    fn tcp_state_machine() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(40001, 6);
        let i = c.insert(o, nat_reply(o, 61001), 0).unwrap();
        let step = |c: &mut Conntrack, d, f| {
            c.update(i, d, f, 1);
            c.entry(i).tcp()
        };
        assert_eq!(step(&mut c, Dir::Orig, SYN), TcpState::SynSent);
        assert_eq!(step(&mut c, Dir::Reply, SYN | ACK), TcpState::SynRecv);
        assert!(!c.entry(i).assured());
        assert_eq!(step(&mut c, Dir::Orig, ACK), TcpState::Established);
        assert!(c.entry(i).assured());
        assert_eq!(c.entry(i).expires, 1 + 432_000);
        assert_eq!(step(&mut c, Dir::Orig, ACK), TcpState::Established);
        assert_eq!(step(&mut c, Dir::Orig, FIN | ACK), TcpState::FinWait);
        assert_eq!(step(&mut c, Dir::Reply, ACK), TcpState::CloseWait);
        assert_eq!(step(&mut c, Dir::Reply, FIN | ACK), TcpState::LastAck);
        assert_eq!(step(&mut c, Dir::Orig, ACK), TcpState::TimeWait);
        assert_eq!(c.entry(i).expires, 1 + 120);
        // Simultaneous close: both FINs, then the last ACK.
        let o2 = t(40002, 6);
        let j = c.insert(o2, nat_reply(o2, 61002), 0).unwrap();
        for (d, f) in [
            (Dir::Orig, SYN),
            (Dir::Reply, SYN | ACK),
            (Dir::Orig, ACK),
            (Dir::Orig, FIN | ACK),
        ] {
            c.update(j, d, f, 1);
        }
        c.update(j, Dir::Reply, FIN | ACK, 1);
        assert_eq!(c.entry(j).tcp(), TcpState::LastAck);
        c.update(j, Dir::Orig, RST, 1);
        assert_eq!(c.entry(j).tcp(), TcpState::Close);
        assert_eq!(c.entry(j).expires, 1 + 10);
    }

    #[test]
    fn udp_assured_after_reply() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(5353, 17);
        let i = c.insert(o, nat_reply(o, 61003), 0).unwrap();
        c.update(i, Dir::Orig, 0, 0);
        assert_eq!(c.entry(i).expires, 30);
        c.update(i, Dir::Reply, 0, 5);
        assert!(c.entry(i).assured());
        assert_eq!(c.entry(i).expires, 125);
    }

    #[test]
    fn udp_is_a_stream_only_when_replied_and_older_than_two_seconds() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(5354, 17);
        let i = c.insert(o, nat_reply(o, 61004), 100).unwrap();
        // A query answered at once (DNS): replied, not a stream, the short timeout.
        c.update(i, Dir::Reply, 0, 100);
        assert!(c.entry(i).seen_reply() && !c.entry(i).assured());
        assert_eq!(c.entry(i).expires, 130);
        c.update(i, Dir::Orig, 0, 101);
        assert!(!c.entry(i).assured(), "1 s old");
        assert_eq!(c.entry(i).expires, 131);
        // Still going 2 s after it began, replied: assured, 120 s.
        c.update(i, Dir::Orig, 0, 102);
        assert!(c.entry(i).assured());
        assert_eq!(c.entry(i).expires, 222);
        // Unreplied flows never become streams, however old.
        let o2 = t(5355, 17);
        let k = c.insert(o2, nat_reply(o2, 61005), 100).unwrap();
        c.update(k, Dir::Orig, 0, 110);
        assert!(!c.entry(k).assured());
        assert_eq!(c.entry(k).expires, 140);
    }

    #[test]
    fn invalid_tcp_flags_change_nothing() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(41000, 6);
        let i = c.insert(o, nat_reply(o, 61010), 0).unwrap();
        assert!(c.update(i, Dir::Orig, SYN, 0));
        assert!(c.update(i, Dir::Reply, SYN | ACK, 0));
        assert!(c.update(i, Dir::Orig, ACK, 0));
        assert_eq!(c.entry(i).tcp(), TcpState::Established);
        let before = *c.entry(i);
        for bad in [
            SYN | FIN,
            SYN | RST,
            FIN,
            0,
            SYN | FIN | ACK,
            SYN | RST | ACK,
        ] {
            assert!(!tcp_flags_valid(bad), "{bad:#x}");
            assert!(!c.update(i, Dir::Orig, bad, 50), "{bad:#x} accepted");
            let e = c.entry(i);
            assert_eq!(e.tcp(), TcpState::Established, "{bad:#x} moved the state");
            assert_eq!(e.expires, before.expires, "{bad:#x} refreshed the timeout");
        }
        // PSH (0x08) and URG where Linux allows it are fine.
        for good in [ACK | 0x08, FIN | ACK, RST, RST | ACK, ACK | 0x20, SYN | ACK] {
            assert!(tcp_flags_valid(good), "{good:#x}");
        }
        assert!(
            !tcp_flags_valid(SYN | ACK | 0x20),
            "SYN+ACK+URG (Linux: invalid)"
        );
    }

    #[test]
    fn a_reopened_tuple_starts_a_clean_connection() {
        let mut c = Conntrack::new(16, Timeouts::default(), 0);
        let o = t(41001, 6);
        let close = |c: &mut Conntrack, i: u32| {
            for (d, f) in [
                (Dir::Orig, SYN),
                (Dir::Reply, SYN | ACK),
                (Dir::Orig, ACK),
                (Dir::Orig, FIN | ACK),
                (Dir::Reply, FIN | ACK),
                (Dir::Orig, ACK),
            ] {
                assert!(c.update(i, d, f, 1));
            }
        };
        let i = c.insert(o, nat_reply(o, 61011), 0).unwrap();
        close(&mut c, i);
        assert_eq!(c.entry(i).tcp(), TcpState::TimeWait);
        // Ten connections on the same tuple, each opened over the last one's
        // TIME_WAIT: every one closes to TIME_WAIT again (none is left in CLOSE_WAIT
        // by the previous one's FIN bits).
        for round in 0..10 {
            assert!(c.lookup_or_reopen(&o, SYN, 1).is_none(), "round {round}");
            let k = c.insert(o, nat_reply(o, 61011), 1).unwrap();
            close(&mut c, k);
            assert_eq!(c.entry(k).tcp(), TcpState::TimeWait, "round {round}");
        }
        // The state machine alone (no removal) also forgets the old close.
        let mut flags = F_FIN_ORIG | F_FIN_REPLY | F_ASSURED | F_SEEN_REPLY;
        assert_eq!(
            tcp_next(TcpState::TimeWait, Dir::Orig, SYN, &mut flags),
            TcpState::SynSent
        );
        assert_eq!(flags, 0);
    }

    #[test]
    fn entries_expire_on_time_with_bounded_work() {
        let to = Timeouts {
            udp: 3,
            ..Timeouts::default()
        };
        let mut c = Conntrack::new(1000, to, 0);
        for p in 0..500u16 {
            let o = t(p, 17);
            c.insert(o, nat_reply(o, 60000 + p), 0).unwrap();
        }
        assert_eq!(c.expire(2, 10_000), 0);
        assert_eq!(c.len(), 500);
        // At most 100 per call: five polls to expire them all.
        let mut polls = 0;
        while !c.is_empty() {
            let n = c.expire(3, 100);
            assert!(n <= 100);
            polls += 1;
            assert!(polls < 10);
        }
        assert_eq!(polls, 5);
        assert_eq!(c.lookup(&t(1, 17), 3), None);
        // The tuples are free again.
        let o = t(1, 17);
        assert!(c.insert(o, nat_reply(o, 60001), 3).is_ok());
    }

    #[test]
    fn refreshed_entries_survive_their_first_slot() {
        let to = Timeouts {
            udp: 2,
            udp_stream: 10,
            ..Timeouts::default()
        };
        let mut c = Conntrack::new(10, to, 0);
        let o = t(7, 17);
        let i = c.insert(o, nat_reply(o, 60007), 0).unwrap();
        // Replied 2 s after it began: a stream, 10 s from then.
        c.update(i, Dir::Reply, 0, 2);
        assert_eq!(c.expire(5, 100), 0, "re-filed, not expired");
        assert!(c.lookup(&o, 5).is_some());
        assert_eq!(c.expire(11, 100), 0);
        assert_eq!(c.expire(12, 100), 1);
    }

    #[test]
    fn a_reset_connection_goes_at_its_close_timeout_not_its_first_one() {
        use crate::wire::tcp::flags::{RST, SYN};
        let mut c = Conntrack::new(10, Timeouts::default(), 0);
        let o = t(9, 6);
        let i = c.insert(o, nat_reply(o, 60009), 0).unwrap();
        c.update(i, Dir::Orig, SYN, 0);
        let first = c.entry(i).expires;
        assert!(first >= 60, "SYN_SENT waits long: {first}");
        // SYN then RST: CLOSE's 10 s, not SYN_SENT's slot minutes away.
        c.update(i, Dir::Reply, RST, 1);
        assert_eq!(c.entry(i).tcp(), TcpState::Close);
        assert_eq!(c.expire(10, 100), 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.expire(11, 100), 1, "gone at 1 + 10 s");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn full_table_evicts_unassured_first() {
        let mut c = Conntrack::new(2, Timeouts::default(), 0);
        let a = t(1, 17);
        let b = t(2, 17);
        let ia = c.insert(a, nat_reply(a, 60001), 0).unwrap();
        c.update(ia, Dir::Reply, 0, 2); // a replied stream: assured
        c.insert(b, nat_reply(b, 60002), 2).unwrap();
        let x = t(3, 17);
        assert!(c.insert(x, nat_reply(x, 60003), 2).is_ok(), "b evicted");
        assert_eq!(c.stats.early_dropped, 1);
        assert!(c.lookup(&a, 2).is_some());
        assert!(c.lookup(&b, 2).is_none());
        // Now x unassured, a assured: one more evicts x.
        let y = t(4, 17);
        assert!(c.insert(y, nat_reply(y, 60004), 2).is_ok());
        // Make everything assured: the next insert is refused.
        let iy = c.lookup(&y, 2).unwrap().0;
        c.update(iy, Dir::Reply, 0, 4);
        let z = t(5, 17);
        assert_eq!(c.insert(z, nat_reply(z, 60005), 4), Err(InsertError::Full));
        assert_eq!(c.stats.refused_full, 1);
    }

    mod resume {
        use super::*;
        use std::os::unix::fs::FileExt;

        const OWNER: state::Owner = state::Owner {
            worker: 0,
            workers: 2,
            nat: (30000, 60999),
        };

        struct Dir_(std::path::PathBuf);
        impl Drop for Dir_ {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        fn dir(name: &str) -> Dir_ {
            let d = std::env::temp_dir().join(format!("pp-ct-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            Dir_(d)
        }
        fn table(d: &Dir_, reserved: usize, now: u32) -> (Conntrack, Restored, state::Outcome) {
            let st = state::open(&d.0, OWNER, reserved).unwrap();
            let o = st.outcome.clone();
            let (c, r) = Conntrack::resume(reserved, Timeouts::default(), now, st);
            (c, r, o)
        }

        #[test]
        fn connections_in_a_state_file_outlive_the_table_that_made_them() {
            let d = dir("outlive");
            let (mut c, r, o) = table(&d, 64, 100);
            assert_eq!((o, r.restored), (state::Outcome::Fresh, 0));
            let (a, b, gone) = (t(40000, 6), t(40001, 17), t(40002, 17));
            let ia = c.insert(a, nat_reply(a, 61000), 100).unwrap();
            c.update(ia, Dir::Reply, SYN | ACK, 100);
            c.update(ia, Dir::Orig, ACK, 100);
            c.insert(b, nat_reply(b, 61001), 100).unwrap();
            let ig = c.insert(gone, nat_reply(gone, 61002), 100).unwrap();
            c.remove(ig);
            // The process dies: nothing is written on the way out.
            drop(c);
            let (mut c, r, o) = table(&d, 64, 110);
            assert_eq!(o, state::Outcome::Resumed);
            assert_eq!((r.restored, r.invalid, r.duplicate), (2, 0, 0), "{r:?}");
            let (i, dir) = c
                .lookup(&nat_reply(a, 61000), 110)
                .expect("reply side of a");
            assert_eq!(dir, Dir::Reply);
            assert_eq!(c.entry(i).tcp(), TcpState::Established);
            assert!(c.entry(i).assured());
            assert!(c.lookup(&b, 110).is_some());
            assert!(
                c.lookup(&gone, 110).is_none(),
                "a removed connection came back"
            );
            assert_eq!(c.len(), 2);
            // The removed one's slot is free again, and new connections do not land
            // on the resumed ones.
            let n = t(40003, 17);
            let j = c.insert(n, nat_reply(n, 61003), 110).unwrap();
            assert_eq!(j, ig);
            assert!(c.lookup(&b, 110).is_some() && c.lookup(&a, 110).is_some());
            // And its wheel works: b (UDP, 30 s, unreplied) expires on time. No
            // wall time passed between the two tables, but this clock reads 10 s
            // later: the 30 s count on this clock, from 110.
            assert_eq!(r.shift, 10);
            assert_eq!(c.expire(139, 1000), 0);
            assert!(c.expire(141, 1000) >= 1);
            assert!(c.lookup(&b, 141).is_none());
        }

        #[test]
        fn a_later_clock_moves_every_expiry_by_the_time_that_passed() {
            let d = dir("clock");
            let (mut c, _, _) = table(&d, 64, 1000);
            let a = t(40000, 17);
            c.insert(a, nat_reply(a, 61000), 1000).unwrap(); // expires at 1030
                                                             // Ten seconds of wall time ago, the old clock said 1000.
            c.hdr[0].clock_secs = 1000;
            c.hdr[0].wall_ms = state::wall_ms() - 10_000;
            drop(c);
            // The new process's clock reads 50 for the same moment as the old's 1010.
            let (c, r, _) = table(&d, 64, 50);
            assert_eq!(r.shift, -960);
            let i = c.lookup(&a, 50).expect("resumed").0;
            assert_eq!(c.entry(i).expires, 70, "20 s were left");
        }

        #[test]
        fn a_file_of_another_layout_boot_or_worker_split_is_refused_by_name() {
            let d = dir("refuse");
            let (mut c, _, _) = table(&d, 64, 10);
            let a = t(40000, 17);
            c.insert(a, nat_reply(a, 61000), 10).unwrap();
            c.hdr[0].layout = 99;
            drop(c);
            let (c, r, o) = table(&d, 64, 10);
            let state::Outcome::Refused(why) = o else {
                panic!("{o:?}")
            };
            assert!(why.contains("layout 99"), "{why}");
            assert_eq!((r.restored, c.len()), (0, 0));
            assert!(state::path(&d.0, 0).with_extension("refused").exists());
            drop(c);
            for (field, expect) in [("workers", "worker 0 of 3"), ("boot", "restarted")] {
                let (mut c, _, _) = table(&d, 64, 10);
                c.insert(a, nat_reply(a, 61000), 10).unwrap();
                match field {
                    "workers" => c.hdr[0].workers = 3,
                    _ => c.hdr[0].boot_id[0] ^= 1,
                }
                drop(c);
                let (c, _, o) = table(&d, 64, 10);
                assert!(
                    matches!(&o, state::Outcome::Refused(w) if w.contains(expect)),
                    "{field}: {o:?}"
                );
                assert_eq!(c.len(), 0);
            }
        }

        #[test]
        fn a_changed_reservation_is_converted_with_its_connections() {
            let d = dir("convert");
            let (mut c, _, _) = table(&d, 64, 10);
            for p in 0..20 {
                let x = t(40000 + p, 17);
                c.insert(x, nat_reply(x, 61000 + p), 10).unwrap();
            }
            drop(c);
            let (c, r, o) = table(&d, 256, 11);
            assert_eq!(o, state::Outcome::Converted { from_reserved: 64 });
            assert_eq!((r.restored, c.reserved()), (20, 256));
            drop(c);
            let (c, r, o) = table(&d, 256, 12);
            assert_eq!((o, r.restored, c.len()), (state::Outcome::Resumed, 20, 20));
        }

        #[test]
        fn garbage_in_the_file_is_dropped_and_counted_never_trusted() {
            let d = dir("garbage");
            let (mut c, _, _) = table(&d, 512, 10);
            let a = t(40000, 6);
            c.insert(a, nat_reply(a, 61000), 10).unwrap();
            c.hdr[0].used = 512;
            drop(c);
            // Overwrite every entry but the first with pseudo-random bytes, some
            // of them plausible (TCP/UDP protocols, small state values).
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(state::path(&d.0, 0))
                .unwrap();
            let page = crate::dpdk::region::page_size() as u64;
            let size = std::mem::size_of::<Entry>();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut bytes = vec![0u8; size * 511];
            for (k, b) in bytes.iter_mut().enumerate() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Expiries near now (bytes 32-35, little endian), so the checks on
                // meaning are what stands between these bytes and the table.
                *b = match k % size {
                    12 | 28 => [6, 17, 1, 0, 47][(x % 5) as usize],
                    32 => 20 + (x % 200).to_le_bytes()[0],
                    33..=35 => 0,
                    40 => [0, 1, 3, 5, 8, 9, 200][(x % 7) as usize],
                    41 => [0, 2, 8, 128, 4][(x % 5) as usize],
                    _ => x.to_le_bytes()[0],
                };
            }
            f.write_all_at(&bytes, page + size as u64).unwrap();
            drop(f);
            let (mut c, r, _) = table(&d, 512, 10);
            // Every entry handed out is judged once; the dead ones are free.
            let dead = 512 - (r.restored + r.invalid + r.expired + r.duplicate);
            assert_eq!(c.free.len(), dead + r.invalid + r.expired + r.duplicate);
            assert!(r.restored >= 1 && r.invalid > 100, "{r:?}");
            assert!(c.lookup(&a, 10).is_some(), "the real connection was lost");
            // Whatever was restored is consistent: found by both keys, expiring
            // within the longest timeout; and the table keeps working.
            let live: Vec<Entry> = c.entries(10).copied().collect();
            assert_eq!(live.len(), r.restored);
            for e in &live {
                assert!(c.lookup(&e.orig, 10).is_some() && c.lookup(&e.reply, 10).is_some());
                assert!(
                    matches!(e.orig.proto, 1 | 6 | 17)
                        && e.reply.proto == e.orig.proto
                        && e.tcp <= TcpState::Close as u8
                        && (e.orig.proto == 6 || e.tcp == 0)
                        && e.flags & !F_KNOWN == 0,
                    "restored garbage: {e:?}"
                );
            }
            assert_eq!(c.expire(10 + 432_001 + 2000, usize::MAX), r.restored);
            assert_eq!(c.len(), 0);
            let n = t(40001, 17);
            assert!(c.insert(n, nat_reply(n, 61001), 500_000).is_ok());
        }

        #[test]
        fn a_second_process_on_the_same_file_is_refused() {
            let d = dir("locked");
            let (_c, _, _) = table(&d, 64, 10);
            let e = state::open(&d.0, OWNER, 64).err().expect("opened twice");
            assert!(e.to_string().contains("another process"), "{e}");
        }
    }
}

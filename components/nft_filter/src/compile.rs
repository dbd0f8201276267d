//! From the syntax tree to a [`Ruleset`]: the validated, compact program
//! the evaluator runs. A `Ruleset` exists only if every chain name
//! resolved, no jump/goto loops (the kernel refuses them, as does this),
//! the jump depth stays within the kernel's 16, every set element has its
//! set's type, and no rule jumps to a base chain. Past this point nothing
//! can be unvalidated (the netstack3 `ValidRoutines` idea).
//!
//! Compilation precomputes what the data path needs: prefix masks, ranges,
//! hashed sets for exact values, sorted disjoint intervals for prefix and
//! range sets, per-hook lists of base chains in priority order.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::ast::*;
use crate::types::{DataType, Family, Field, Hook};

/// A compile error: what is wrong and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub pos: Pos,
    pub message: String,
}

impl core::fmt::Display for CompileError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

fn cerr(pos: Pos, message: String) -> CompileError {
    CompileError { pos, message }
}

/// Kernel limit on nested jumps (NFT_JUMP_STACK_SIZE).
pub const JUMP_STACK: usize = 16;

/// Which packets a hook list serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    V4 = 0,
    V6 = 1,
    Ether = 2,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Test<T> {
    Eq(T),
    Range(T, T),
    Le(T),
    Ge(T),
    /// `x & bits != 0` (implicit match on a bitmask type).
    AnyBits(T),
    Set(u32),
}

impl Test<u128> {
    fn narrow(self) -> Test<u64> {
        match self {
            Test::Eq(v) => Test::Eq(v as u64),
            Test::Range(a, b) => Test::Range(a as u64, b as u64),
            Test::Le(v) => Test::Le(v as u64),
            Test::Ge(v) => Test::Ge(v as u64),
            Test::AnyBits(v) => Test::AnyBits(v as u64),
            Test::Set(s) => Test::Set(s),
        }
    }
}

/// A comparison as compiled, before it is stored narrow or wide.
struct Cmp {
    field: Field,
    mask: u128,
    neg: bool,
    test: Test<u128>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    Accept,
    Drop,
    Reject(RejectWith),
    Jump(u32),
    Goto(u32),
    Return,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// `(load(field) & mask) <test>`, negated if `neg`; on failure the rule
    /// ends without a verdict. For fields of at most 64 bits (all but IPv6
    /// addresses and interface names), which keeps ops small.
    Cmp {
        field: Field,
        neg: bool,
        mask: u64,
        test: Test<u64>,
    },
    /// The same for 128-bit fields; operands in `Ruleset::wide[idx]`.
    CmpWide {
        field: Field,
        neg: bool,
        idx: u32,
    },
    Counter(u32),
    Limit(u32),
    Log,
    Verdict(Target),
    /// Look the field up in a map; a hit is that verdict, a miss ends the rule.
    Vmap {
        field: Field,
        set: u32,
    },
}

/// An open-addressing hash table of exact values (power-of-two slots).
#[derive(Debug, Default)]
pub(crate) struct HashSet {
    slots: Vec<(u128, u32)>,
    mask: usize,
}

const NO: u32 = u32::MAX;

fn hash128(v: u128) -> usize {
    let h = ((v as u64) ^ ((v >> 64) as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h ^ (h >> 31)) as usize
}

impl HashSet {
    fn build(items: &[(u128, u32)]) -> HashSet {
        let n = (items.len() * 2).max(4).next_power_of_two();
        let mut s = HashSet {
            slots: alloc::vec![(0, NO); n],
            mask: n - 1,
        };
        for &(k, p) in items {
            let mut i = hash128(k) & s.mask;
            loop {
                if s.slots[i].1 == NO || s.slots[i].0 == k {
                    s.slots[i] = (k, p);
                    break;
                }
                i = (i + 1) & s.mask;
            }
        }
        s
    }
    #[inline]
    fn get(&self, k: u128) -> Option<u32> {
        let mut i = hash128(k) & self.mask;
        loop {
            let (key, p) = self.slots[i];
            if p == NO {
                return None;
            }
            if key == k {
                return Some(p);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A compiled set or verdict map.
#[derive(Debug)]
pub(crate) enum CSet {
    /// Exact values → payload (verdict index for maps, 0 for sets).
    Hash(HashSet),
    /// Sorted disjoint `[lo, hi]` intervals with payloads.
    Intervals(Vec<(u128, u128, u32)>),
}

impl CSet {
    #[inline]
    pub(crate) fn get(&self, k: u128) -> Option<u32> {
        match self {
            CSet::Hash(h) => h.get(k),
            CSet::Intervals(v) => {
                let i = v.partition_point(|&(lo, _, _)| lo <= k);
                if i == 0 {
                    return None;
                }
                let (_, hi, p) = v[i - 1];
                (k <= hi).then_some(p)
            }
        }
    }
}

fn interval(t: DataType, e: Elem) -> (u128, u128) {
    match e {
        Elem::Value(v) => (v, v),
        Elem::Range(a, b) => (a, b),
        Elem::Prefix(a, l) => {
            let m = prefix_mask(t, l);
            (a & m, (a & m) | (!m & t.full_mask()))
        }
    }
}

fn prefix_mask(t: DataType, len: u8) -> u128 {
    let bits = t.bits();
    if len == 0 {
        0
    } else {
        (t.full_mask() >> (bits - len as u32)) << (bits - len as u32)
    }
}

/// Builds a set from elements with payloads. Overlapping elements merge in
/// plain sets and are an error in maps.
fn build_set(
    t: DataType,
    elems: &[(Elem, u32)],
    is_map: bool,
    pos: Pos,
) -> Result<CSet, CompileError> {
    if elems.iter().all(|(e, _)| matches!(e, Elem::Value(_))) {
        let items: Vec<(u128, u32)> = elems.iter().map(|(e, p)| (interval(t, *e).0, *p)).collect();
        if is_map {
            let mut keys: Vec<u128> = items.iter().map(|i| i.0).collect();
            keys.sort_unstable();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return Err(cerr(pos, "verdict map has a key twice".into()));
            }
        }
        return Ok(CSet::Hash(HashSet::build(&items)));
    }
    let mut v: Vec<(u128, u128, u32)> = elems
        .iter()
        .map(|(e, p)| {
            let (a, b) = interval(t, *e);
            (a, b, *p)
        })
        .collect();
    v.sort_unstable_by_key(|x| (x.0, x.1));
    let mut out: Vec<(u128, u128, u32)> = Vec::with_capacity(v.len());
    for x in v {
        match out.last_mut() {
            Some(last)
                if x.0 <= last.1 || (last.1 != u128::MAX && x.0 == last.1 + 1 && !is_map) =>
            {
                if is_map && x.0 <= last.1 {
                    return Err(cerr(pos, "verdict map has overlapping keys".into()));
                }
                last.1 = last.1.max(x.1);
            }
            _ => out.push(x),
        }
    }
    Ok(CSet::Intervals(out))
}

/// nft refuses a rule whose matches need two different network or
/// transport protocols ("conflicting protocols specified"), e.g.
/// `meta l4proto udp tcp dport 22` or `ip saddr … ip6 daddr …`; so do we.
fn check_protocols(r: &Rule) -> Result<(), CompileError> {
    let mut l3: Option<(&str, u32)> = None;
    let mut l4: Option<(&str, u32)> = None;
    let name = |v: u32| match v {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        4 => "ip",
        0x0806 => "arp",
        60 => "ip6",
        _ => "set",
    };
    let set =
        |slot: &mut Option<(&str, u32)>, v: u32, what: &'static str| -> Result<(), CompileError> {
            match *slot {
                Some((w, x)) if x != v => Err(cerr(
                    r.pos,
                    format!(
                        "conflicting protocols specified: {} vs. {} ({w} / {what})",
                        name(x),
                        name(v)
                    ),
                )),
                _ => {
                    *slot = Some((what, v));
                    Ok(())
                }
            }
        };
    for s in &r.stmts {
        let Stmt::Match(m) = s else { continue };
        let exact = matches!(m.op, CmpOp::Implicit | CmpOp::Eq) && m.mask.is_none();
        let value = match &m.rhs {
            Rhs::Elem(Elem::Value(v)) if exact => Some(*v as u32),
            Rhs::Set(_) | Rhs::Named(_) if exact => Some(0xffff_ffff),
            _ => None,
        };
        use Field::*;
        match m.field {
            IpSaddr | IpDaddr | IpProtocol | IpLength | IpTtl => set(&mut l3, 4, "ip")?,
            Ip6Saddr | Ip6Daddr | Ip6Nexthdr => set(&mut l3, 60, "ip6")?,
            IcmpType | IcmpCode => {
                set(&mut l3, 4, "icmp")?;
                set(&mut l4, 1, "icmp")?;
            }
            TcpSport | TcpDport | TcpFlags => set(&mut l4, 6, "tcp")?,
            UdpSport | UdpDport | UdpLength => set(&mut l4, 17, "udp")?,
            MetaNfproto => match value {
                Some(2) => set(&mut l3, 4, "meta nfproto")?,
                Some(10) => set(&mut l3, 60, "meta nfproto")?,
                _ => {}
            },
            EtherType => match value {
                Some(0x0800) => set(&mut l3, 4, "ether type")?,
                Some(0x86dd) => set(&mut l3, 60, "ether type")?,
                Some(v) if v != 0xffff_ffff => set(&mut l3, v, "ether type")?,
                _ => {}
            },
            _ => {}
        }
        if matches!(m.field, MetaL4proto | IpProtocol | Ip6Nexthdr) {
            if let Some(v) = value {
                set(&mut l4, v, "protocol match")?;
            }
        }
    }
    Ok(())
}

pub(crate) struct CChain {
    pub name: String,
    pub rules: core::ops::Range<u32>,
    pub policy_drop: bool,
    pub family: Family,
}

/// A counter statement's live values.
#[derive(Debug, Default)]
pub struct Counter {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
}

/// Token bucket of a `limit` statement (kernel nft_limit, packet mode).
#[derive(Debug)]
pub(crate) struct Limit {
    pub tokens: AtomicU64,
    pub last: AtomicU64,
    pub tokens_max: u64,
    pub cost: u64,
    pub over: bool,
}

/// A validated, compiled ruleset. Only [`Ruleset::compile`] makes one.
pub struct Ruleset {
    pub(crate) tables: Vec<Table>,
    pub(crate) chains: Vec<CChain>,
    /// Rule i's ops: `ops[rule_ops[i]..rule_ops[i+1]]`.
    pub(crate) rule_ops: Vec<u32>,
    pub(crate) ops: Vec<Op>,
    pub(crate) sets: Vec<CSet>,
    pub(crate) targets: Vec<Target>,
    /// Operands of `Op::CmpWide`.
    pub(crate) wide: Vec<(u128, Test<u128>)>,
    pub(crate) counters: Vec<Counter>,
    /// Rule handle of each counter, for carrying values across updates.
    pub(crate) counter_rule: Vec<(u64, u16)>,
    pub(crate) limits: Vec<Limit>,
    /// Base chains per hook and packet kind, in priority order.
    pub(crate) hooks: [[Vec<u32>; 3]; 3],
    pub(crate) uses_ct: bool,
    /// Per hook and packet kind: the conntrack states (bits of
    /// `conntrack::state`) for which every base chain accepts at once, so
    /// that a packet in such a state needs only the tracker (see
    /// [`Ruleset::ct_accept_states`]).
    pub(crate) ct_fast: [[u32; 3]; 3],
    pub(crate) generation: u64,
}

impl core::fmt::Debug for Ruleset {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ruleset")
            .field("chains", &self.chains.len())
            .field("rules", &(self.rule_ops.len().saturating_sub(1)))
            .finish()
    }
}

fn uses_ct(field: Field) -> bool {
    matches!(field, Field::CtState | Field::CtDirection)
}

impl Ruleset {
    /// An empty ruleset (accepts everything).
    pub fn empty() -> Ruleset {
        Ruleset::compile(Vec::new()).expect("the empty ruleset is valid")
    }

    /// Validates and compiles a set of tables.
    pub fn compile(tables: Vec<Table>) -> Result<Ruleset, CompileError> {
        let mut rs = Ruleset {
            tables: Vec::new(),
            chains: Vec::new(),
            rule_ops: alloc::vec![0],
            ops: Vec::new(),
            sets: Vec::new(),
            targets: Vec::new(),
            wide: Vec::new(),
            counters: Vec::new(),
            counter_rule: Vec::new(),
            limits: Vec::new(),
            hooks: Default::default(),
            uses_ct: false,
            ct_fast: [[0; 3]; 3],
            generation: 0,
        };
        // Chain indices of every table first, so jumps resolve forward.
        let mut chain_base = Vec::with_capacity(tables.len());
        for (ti, t) in tables.iter().enumerate() {
            if tables[..ti]
                .iter()
                .any(|o| o.family == t.family && o.name == t.name)
            {
                return Err(cerr(
                    t.pos,
                    format!("table {} {} declared twice", t.family.name(), t.name),
                ));
            }
            chain_base.push(rs.chains.len() as u32);
            for (ci, c) in t.chains.iter().enumerate() {
                if t.chains[..ci].iter().any(|o| o.name == c.name) {
                    return Err(cerr(c.pos, format!("chain '{}' declared twice", c.name)));
                }
                rs.chains.push(CChain {
                    name: c.name.clone(),
                    rules: 0..0,
                    policy_drop: c.base.is_some_and(|b| b.policy == Policy::Drop),
                    family: t.family,
                });
            }
        }
        let mut rule_idx = 0u32;
        for (ti, t) in tables.iter().enumerate() {
            // Named sets of this table.
            let mut set_ids = Vec::new();
            for (si, s) in t.sets.iter().enumerate() {
                if t.sets[..si].iter().any(|o| o.name == s.name) {
                    return Err(cerr(s.pos, format!("set '{}' declared twice", s.name)));
                }
                let elems: Vec<(Elem, u32)> = s.elements.iter().map(|e| (*e, 0)).collect();
                set_ids.push(rs.sets.len() as u32);
                rs.sets.push(build_set(s.key, &elems, false, s.pos)?);
            }
            let resolve = |name: &str, pos: Pos| -> Result<u32, CompileError> {
                let ci = t
                    .chains
                    .iter()
                    .position(|c| c.name == name)
                    .ok_or_else(|| {
                        cerr(
                            pos,
                            format!("no chain '{name}' in table {} {}", t.family.name(), t.name),
                        )
                    })?;
                if t.chains[ci].base.is_some() {
                    return Err(cerr(pos, format!("cannot jump to base chain '{name}'")));
                }
                Ok(chain_base[ti] + ci as u32)
            };
            for (ci, c) in t.chains.iter().enumerate() {
                let first = rule_idx;
                for r in &c.rules {
                    rs.compile_rule(t, r, &set_ids, &resolve)?;
                    rule_idx += 1;
                }
                rs.chains[(chain_base[ti] + ci as u32) as usize].rules = first..rule_idx;
            }
        }
        rs.check_loops(&tables)?;
        // Hook lists by priority. For equal priorities the kernel runs the
        // chain registered last first (nf_hook_entries_grow inserts a new
        // hook before existing ones of the same priority), and chains are
        // registered in declaration order, so ties go in reverse order.
        let mut bases: Vec<(i32, u32, Hook, Family)> = Vec::new();
        for (ti, t) in tables.iter().enumerate() {
            for (ci, c) in t.chains.iter().enumerate() {
                if let Some(b) = c.base {
                    bases.push((b.priority, chain_base[ti] + ci as u32, b.hook, t.family));
                }
            }
        }
        bases.reverse();
        bases.sort_by_key(|b| b.0);
        for (_, idx, hook, fam) in bases {
            let kinds: &[Proto] = match fam {
                Family::Inet => &[Proto::V4, Proto::V6],
                Family::Ip => &[Proto::V4],
                Family::Ip6 => &[Proto::V6],
                Family::Bridge => &[Proto::Ether],
            };
            for k in kinds {
                rs.hooks[hook.index()][*k as usize].push(idx);
            }
        }
        for h in 0..3 {
            for k in 0..3 {
                rs.ct_fast[h][k] = rs.ct_accept_states(h, k);
            }
        }
        rs.tables = tables;
        Ok(rs)
    }

    /// The conntrack states for which the base chains of hook `h`, packet
    /// kind `k`, all accept without looking at anything else: a chain
    /// qualifies for state `s` if it has no rules and policy accept, or if
    /// its first rule is exactly one `ct state` match followed by `accept`
    /// (e.g. `ct state established,related accept`; no counter, limit, log
    /// or other match: the rule has no side effect) and that match holds
    /// for `s`. Running the chains on such a packet would give Accept and
    /// change nothing, so the evaluator skips them (the tracker still runs:
    /// it decides the state). No base chain: 0 (the hook is cheap anyway).
    fn ct_accept_states(&self, h: usize, k: usize) -> u32 {
        use crate::conntrack::state;
        const STATES: [u32; 5] = [
            state::INVALID,
            state::ESTABLISHED,
            state::RELATED,
            state::NEW,
            state::UNTRACKED,
        ];
        let bases = &self.hooks[h][k];
        if bases.is_empty() || !self.uses_ct {
            return 0;
        }
        let mut all = STATES.iter().fold(0, |a, s| a | s);
        for &c in bases {
            let ch = &self.chains[c as usize];
            let mut ok = 0;
            if ch.rules.is_empty() {
                if !ch.policy_drop {
                    ok = all;
                }
            } else {
                let r = ch.rules.start as usize;
                let ops = &self.ops[self.rule_ops[r] as usize..self.rule_ops[r + 1] as usize];
                if let [Op::Cmp {
                    field: Field::CtState,
                    neg,
                    mask,
                    test,
                }, Op::Verdict(Target::Accept)] = ops
                {
                    for s in STATES {
                        if self.test64(*test, s as u64 & mask) != *neg {
                            ok |= s;
                        }
                    }
                }
            }
            all &= ok;
        }
        all
    }

    fn compile_rule(
        &mut self,
        t: &Table,
        r: &Rule,
        set_ids: &[u32],
        resolve: &dyn Fn(&str, Pos) -> Result<u32, CompileError>,
    ) -> Result<(), CompileError> {
        let target = |v: &Verdict, this: &mut Ruleset| -> Result<Target, CompileError> {
            Ok(match v {
                Verdict::Accept => Target::Accept,
                Verdict::Drop => Target::Drop,
                Verdict::Return => Target::Return,
                Verdict::Reject(w) => {
                    let _ = this;
                    Target::Reject(*w)
                }
                Verdict::Jump(c) => Target::Jump(resolve(c, r.pos)?),
                Verdict::Goto(c) => Target::Goto(resolve(c, r.pos)?),
            })
        };
        check_protocols(r)?;
        let start = self.ops.len();
        for (si, s) in r.stmts.iter().enumerate() {
            match s {
                Stmt::Match(m) => {
                    let ty = m.field.data_type();
                    if uses_ct(m.field) {
                        self.uses_ct = true;
                    }
                    if t.family != Family::Inet && m.field == Field::MetaNfproto {
                        return Err(cerr(
                            r.pos,
                            "meta nfproto is only useful in the inet family".into(),
                        ));
                    }
                    let neg = m.op == CmpOp::Ne;
                    let mut mask = m.mask.unwrap_or(ty.full_mask());
                    let test = match &m.rhs {
                        Rhs::Elem(Elem::Value(v)) => match m.op {
                            CmpOp::Implicit if ty.is_bitmask() => Test::AnyBits(*v),
                            CmpOp::Implicit | CmpOp::Eq | CmpOp::Ne => Test::Eq(*v & mask),
                            CmpOp::Lt if *v == 0 => Test::Range(1, 0),
                            CmpOp::Lt => Test::Le(*v - 1),
                            CmpOp::Le => Test::Le(*v),
                            CmpOp::Gt if *v == ty.full_mask() => Test::Range(1, 0),
                            CmpOp::Gt => Test::Ge(*v + 1),
                            CmpOp::Ge => Test::Ge(*v),
                        },
                        Rhs::Elem(Elem::Range(a, b)) => Test::Range(*a, *b),
                        Rhs::Elem(Elem::Prefix(a, l)) => {
                            mask = prefix_mask(ty, *l);
                            Test::Eq(*a & mask)
                        }
                        Rhs::Set(es) => {
                            let elems: Vec<(Elem, u32)> = es.iter().map(|e| (*e, 0)).collect();
                            self.sets.push(build_set(ty, &elems, false, r.pos)?);
                            Test::Set(self.sets.len() as u32 - 1)
                        }
                        Rhs::Named(n) => {
                            let si = t.sets.iter().position(|s| &s.name == n).ok_or_else(|| {
                                cerr(r.pos, format!("no set '{n}' in table {}", t.name))
                            })?;
                            let key = t.sets[si].key;
                            let compatible = key == ty
                                || (matches!(key, DataType::Mark) && matches!(ty, DataType::Mark))
                                || (key == DataType::InetProto && ty == DataType::InetProto);
                            if !compatible {
                                return Err(cerr(
                                    r.pos,
                                    format!(
                                        "set '{n}' holds {} but the match is on a {}",
                                        crate::types::type_desc(key),
                                        crate::types::type_desc(ty)
                                    ),
                                ));
                            }
                            Test::Set(set_ids[si])
                        }
                    };
                    self.push_cmp(Cmp {
                        field: m.field,
                        mask,
                        neg,
                        test,
                    });
                }
                Stmt::Counter { packets, bytes } => {
                    self.counters.push(Counter {
                        packets: AtomicU64::new(*packets),
                        bytes: AtomicU64::new(*bytes),
                    });
                    self.counter_rule.push((r.handle, si as u16));
                    self.ops.push(Op::Counter(self.counters.len() as u32 - 1));
                }
                Stmt::Limit {
                    rate,
                    per,
                    burst,
                    over,
                } => {
                    // nft_limit_init, packet mode: cost = nsecs / rate and
                    // the bucket holds `burst` packets' worth, full at start
                    // (checked against the kernel: `limit rate 10/second`,
                    // default burst 5, lets 5 packets of a burst through).
                    let ns = per.nanos() as u128;
                    let cost = (ns / *rate as u128) as u64;
                    let tokens_max = (cost as u128 * *burst as u128).min(u64::MAX as u128) as u64;
                    self.limits.push(Limit {
                        tokens: AtomicU64::new(tokens_max),
                        last: AtomicU64::new(u64::MAX),
                        tokens_max,
                        cost,
                        over: *over,
                    });
                    self.ops.push(Op::Limit(self.limits.len() as u32 - 1));
                }
                Stmt::Log { .. } => self.ops.push(Op::Log),
                Stmt::Verdict(v) => {
                    // `reject with tcp reset` implies `meta l4proto tcp`;
                    // `reject with icmp(v6)` implies the IP version in inet
                    // and bridge tables. nft puts these dependencies at the
                    // start of the rule (a counter before `reject` does not
                    // count packets of the other family), and so do we.
                    let (dep_field, dep_value) = match (v, t.family) {
                        (Verdict::Reject(RejectWith::TcpReset), _) => (Some(Field::MetaL4proto), 6),
                        (Verdict::Reject(RejectWith::Icmp(_)), Family::Inet) => {
                            (Some(Field::MetaNfproto), 2)
                        }
                        (Verdict::Reject(RejectWith::Icmpv6(_)), Family::Inet) => {
                            (Some(Field::MetaNfproto), 10)
                        }
                        (Verdict::Reject(RejectWith::Icmp(_)), Family::Bridge) => {
                            (Some(Field::EtherType), 0x0800)
                        }
                        (Verdict::Reject(RejectWith::Icmpv6(_)), Family::Bridge) => {
                            (Some(Field::EtherType), 0x86dd)
                        }
                        _ => (None, 0),
                    };
                    // No dependency when an earlier match already fixes
                    // the protocol (nft then relies on that match).
                    let fixes = |_: Field| -> bool {
                        r.stmts.iter().any(|s| match s {
                            Stmt::Match(m) => match dep_value {
                                6 => {
                                    matches!(
                                        m.field,
                                        Field::TcpSport | Field::TcpDport | Field::TcpFlags
                                    ) || (matches!(
                                        m.field,
                                        Field::MetaL4proto | Field::IpProtocol | Field::Ip6Nexthdr
                                    ) && matches!(m.op, CmpOp::Implicit | CmpOp::Eq)
                                        && m.rhs == Rhs::Elem(Elem::Value(6)))
                                }
                                2 | 10 | 0x0800 | 0x86dd
                                    if matches!(m.op, CmpOp::Implicit | CmpOp::Eq)
                                        && ((m.field == Field::MetaNfproto
                                            && m.rhs
                                                == Rhs::Elem(Elem::Value(
                                                    if matches!(dep_value, 2 | 0x0800) {
                                                        2
                                                    } else {
                                                        10
                                                    },
                                                )))
                                            || (m.field == Field::EtherType
                                                && m.rhs
                                                    == Rhs::Elem(Elem::Value(
                                                        if matches!(dep_value, 2 | 0x0800) {
                                                            0x0800
                                                        } else {
                                                            0x86dd
                                                        },
                                                    )))) =>
                                {
                                    true
                                }
                                2 | 0x0800 => {
                                    matches!(
                                        m.field,
                                        Field::IpSaddr
                                            | Field::IpDaddr
                                            | Field::IpProtocol
                                            | Field::IpLength
                                            | Field::IpTtl
                                            | Field::IcmpType
                                            | Field::IcmpCode
                                    )
                                }
                                _ => matches!(
                                    m.field,
                                    Field::Ip6Saddr | Field::Ip6Daddr | Field::Ip6Nexthdr
                                ),
                            },
                            _ => false,
                        })
                    };
                    if let Some(field) = dep_field.filter(|f| !fixes(*f)) {
                        self.push_cmp(Cmp {
                            field,
                            mask: field.data_type().full_mask(),
                            neg: false,
                            test: Test::Eq(dep_value),
                        });
                        let dep = self.ops.pop().expect("just pushed");
                        self.ops.insert(start, dep);
                    }
                    let tg = target(v, self)?;
                    self.ops.push(Op::Verdict(tg));
                }
                Stmt::Vmap { field, map } => {
                    if uses_ct(*field) {
                        self.uses_ct = true;
                    }
                    let mut elems = Vec::with_capacity(map.len());
                    for (e, v) in map {
                        let tg = target(v, self)?;
                        self.targets.push(tg);
                        elems.push((*e, self.targets.len() as u32 - 1));
                    }
                    self.sets
                        .push(build_set(field.data_type(), &elems, true, r.pos)?);
                    self.ops.push(Op::Vmap {
                        field: *field,
                        set: self.sets.len() as u32 - 1,
                    });
                }
            }
        }
        self.rule_ops.push(self.ops.len() as u32);
        Ok(())
    }

    fn push_cmp(&mut self, c: Cmp) {
        let Cmp {
            field,
            mask,
            neg,
            test,
        } = c;
        if field.data_type().bits() <= 64 {
            self.ops.push(Op::Cmp {
                field,
                neg,
                mask: mask as u64,
                test: test.narrow(),
            });
        } else {
            self.wide.push((mask, test));
            self.ops.push(Op::CmpWide {
                field,
                neg,
                idx: self.wide.len() as u32 - 1,
            });
        }
    }

    /// Jump targets of a chain.
    fn edges(&self, c: u32) -> Vec<u32> {
        let ch = &self.chains[c as usize];
        let mut out = Vec::new();
        let (a, b) = (
            self.rule_ops[ch.rules.start as usize],
            self.rule_ops[ch.rules.end as usize],
        );
        for op in &self.ops[a as usize..b as usize] {
            match op {
                Op::Verdict(Target::Jump(t) | Target::Goto(t)) => out.push(*t),
                Op::Vmap { set, .. } => {
                    let ps: Vec<u32> = match &self.sets[*set as usize] {
                        CSet::Hash(h) => {
                            h.slots.iter().filter(|s| s.1 != NO).map(|s| s.1).collect()
                        }
                        CSet::Intervals(v) => v.iter().map(|x| x.2).collect(),
                    };
                    for p in ps {
                        if let Target::Jump(t) | Target::Goto(t) = self.targets[p as usize] {
                            out.push(t);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Refuses jump loops and chains nested deeper than the kernel allows.
    fn check_loops(&self, tables: &[Table]) -> Result<(), CompileError> {
        let n = self.chains.len();
        let edges: Vec<Vec<u32>> = (0..n as u32).map(|c| self.edges(c)).collect();
        // depth[c]: longest jump path starting at c (None = unknown).
        let mut depth: Vec<Option<usize>> = alloc::vec![None; n];
        let mut on_stack = alloc::vec![false; n];
        let pos_of = |c: usize| -> Pos {
            let mut k = 0;
            for t in tables {
                for ch in &t.chains {
                    if k == c {
                        return ch.pos;
                    }
                    k += 1;
                }
            }
            Pos::default()
        };
        fn visit(
            c: usize,
            edges: &[Vec<u32>],
            depth: &mut [Option<usize>],
            on_stack: &mut [bool],
            names: &dyn Fn(usize) -> String,
            pos_of: &dyn Fn(usize) -> Pos,
        ) -> Result<usize, CompileError> {
            if let Some(d) = depth[c] {
                return Ok(d);
            }
            if on_stack[c] {
                return Err(cerr(
                    pos_of(c),
                    format!("jump loop through chain '{}'", names(c)),
                ));
            }
            on_stack[c] = true;
            let mut d = 0;
            for &e in &edges[c] {
                d = d.max(1 + visit(e as usize, edges, depth, on_stack, names, pos_of)?);
            }
            on_stack[c] = false;
            depth[c] = Some(d);
            Ok(d)
        }
        let names = |c: usize| self.chains[c].name.clone();
        for c in 0..n {
            let d = visit(c, &edges, &mut depth, &mut on_stack, &names, &pos_of)?;
            if d >= JUMP_STACK {
                return Err(cerr(
                    pos_of(c),
                    format!(
                        "chain '{}' nests jumps {d} deep; the limit is {}",
                        self.chains[c].name,
                        JUMP_STACK - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The generation number this ruleset was installed as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether any rule looks at conntrack state.
    pub fn uses_conntrack(&self) -> bool {
        self.uses_ct
    }

    /// The tables this ruleset was compiled from, with counters as loaded.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rule_ops.len() - 1
    }

    /// Takes over the counter values of rules that exist in `old` too (same
    /// handle), so an incremental update does not reset them.
    pub fn inherit_counters(&self, old: &Ruleset) {
        for (i, key) in self.counter_rule.iter().enumerate() {
            if key.0 == 0 {
                continue;
            }
            if let Some(j) = old.counter_rule.iter().position(|k| k == key) {
                let (o, n) = (&old.counters[j], &self.counters[i]);
                n.packets
                    .store(o.packets.load(Ordering::Relaxed), Ordering::Relaxed);
                n.bytes
                    .store(o.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    /// The tables with every `counter` statement holding its live values.
    pub fn snapshot(&self) -> Vec<Table> {
        let mut tables = self.tables.clone();
        let mut k = 0;
        for t in &mut tables {
            for c in &mut t.chains {
                for r in &mut c.rules {
                    for s in &mut r.stmts {
                        if let Stmt::Counter { packets, bytes } = s {
                            *packets = self.counters[k].packets.load(Ordering::Relaxed);
                            *bytes = self.counters[k].bytes.load(Ordering::Relaxed);
                            k += 1;
                        }
                    }
                }
            }
        }
        tables
    }
}

#[cfg(test)]
mod tests {
    use crate::{compile_text, Error};

    fn cerr(src: &str) -> (u32, u32, alloc::string::String) {
        match compile_text(src) {
            Err(Error::Compile(e)) => (e.pos.line, e.pos.col, e.message),
            other => panic!("{src:?}: {other:?}"),
        }
    }

    #[test]
    fn undefined_chain_and_loops() {
        let (l, _, m) = cerr("table inet t {\n chain c {\n  jump nowhere\n }\n}");
        assert_eq!(l, 3);
        assert!(m.contains("nowhere"), "{m}");
        let (_, _, m) = cerr("table inet t {\n chain a { jump b; }\n chain b { goto a; }\n}");
        assert!(m.contains("loop"), "{m}");
        let (_, _, m) = cerr("table inet t {\n chain a { tcp dport vmap { 1 : jump a }; }\n}");
        assert!(m.contains("loop"), "{m}");
        let (_, _, m) = cerr("table inet t {\n chain b { type filter hook input priority 0; }\n chain a { jump b; }\n}");
        assert!(m.contains("base chain"), "{m}");
        // 17 chains deep exceeds the kernel's jump stack.
        let mut s = alloc::string::String::from("table inet t {\n");
        for i in 0..17 {
            s += &alloc::format!(" chain c{i} {{ jump c{}; }}\n", i + 1);
        }
        s += " chain c17 { accept; }\n}";
        let (_, _, m) = cerr(&s);
        assert!(m.contains("deep"), "{m}");
    }

    #[test]
    fn conflicting_protocols_refused_like_nft() {
        for (rule, bad) in [
            ("meta l4proto udp tcp dport 1", true),
            ("meta l4proto { tcp, udp } tcp dport 1", true),
            ("ip protocol udp tcp dport 1", true),
            ("ip saddr 1.1.1.1 ip6 saddr ::1", true),
            ("meta nfproto ipv4 ip6 saddr ::1", true),
            ("tcp dport 1 udp dport 2", true),
            ("icmp type echo-request tcp dport 1", true),
            ("ip6 nexthdr udp tcp dport 1", true),
            ("meta l4proto tcp icmp type echo-request", true),
            ("ether type arp ip saddr 1.1.1.1", true),
            ("ether type ip ip6 saddr ::1", true),
            ("ip protocol != udp tcp dport 1", false),
            ("meta l4proto tcp tcp dport 1", false),
            ("ether type ip ip saddr 1.1.1.1 udp dport 53", false),
            ("meta l4proto icmp icmp type echo-request", false),
        ] {
            let src = alloc::format!("table inet t {{\n chain c {{\n  {rule}\n }}\n}}\n");
            assert_eq!(compile_text(&src).is_err(), bad, "{rule}");
        }
    }

    #[test]
    fn set_types_checked() {
        let (l, _, m) = cerr("table inet t {\n set s { type inet_service; elements = { 22 }; }\n chain c {\n  ip saddr @s accept\n }\n}");
        assert_eq!(l, 4);
        assert!(m.contains("set 's'"), "{m}");
        let (_, _, m) = cerr("table inet t {\n chain c {\n  ip saddr @nope accept\n }\n}");
        assert!(m.contains("no set"), "{m}");
        let (_, _, m) =
            cerr("table inet t {\n chain c {\n  tcp dport vmap { 1-5 : accept, 5 : drop }\n }\n}");
        assert!(m.contains("overlapping"), "{m}");
    }

    #[test]
    fn sets_are_indexed() {
        let rs = compile_text("table inet t {\n set s { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 10.1.0.0/16, 11.0.0.1 }; }\n chain c { tcp dport { 1, 2, 3 } accept\n ip saddr @s accept; }\n}").unwrap();
        // Named set: intervals merged ([10/8] swallows [10.1/16]); anonymous: hashed.
        match &rs.sets[0] {
            super::CSet::Intervals(v) => assert_eq!(v.len(), 2),
            _ => panic!("named interval set must be intervals"),
        }
        match &rs.sets[1] {
            super::CSet::Hash(h) => assert_eq!(h.get(2), Some(0)),
            _ => panic!("exact set must be hashed"),
        }
        assert_eq!(rs.sets[0].get(0x0aff_ffff), Some(0));
        assert_eq!(rs.sets[0].get(0x0b00_0000), None);
        assert_eq!(rs.sets[0].get(0x0b00_0001), Some(0));
    }

    #[test]
    fn ct_fast_path_only_for_a_plain_first_ct_rule() {
        use crate::conntrack::state::*;
        let input = crate::Hook::Input.index();
        let output = crate::Hook::Output.index();
        let v4 = super::Proto::V4 as usize;
        let fast = |src: &str| compile_text(src).unwrap().ct_fast;
        let head =
            "table inet t {\n chain i {\n  type filter hook input priority 0; policy drop;\n";
        let tail = " }\n chain o {\n  type filter hook output priority 0; policy accept;\n }\n}\n";
        // The usual first rule; an empty policy-accept chain accepts all.
        let f = fast(&alloc::format!(
            "{head}  ct state established,related accept\n  udp dport 7 accept\n{tail}"
        ));
        assert_eq!(f[input][v4], ESTABLISHED | RELATED);
        assert_eq!(f[input][super::Proto::V6 as usize], ESTABLISHED | RELATED);
        assert_eq!(
            f[output][v4],
            INVALID | ESTABLISHED | RELATED | NEW | UNTRACKED
        );
        assert_eq!(
            fast(&alloc::format!(
                "{head}  ct state established accept\n{tail}"
            ))[input][v4],
            ESTABLISHED
        );
        assert_eq!(
            fast(&alloc::format!(
                "{head}  ct state != invalid accept\n{tail}"
            ))[input][v4],
            ESTABLISHED | RELATED | NEW | UNTRACKED
        );
        // Side effects or other matches: no fast path.
        for first in [
            "ct state established counter accept",
            "ct state established log accept",
            "ct state established limit rate 10/second accept",
            "ct state established udp dport 7 accept",
            "ct state established drop",
            "udp dport 7 accept",
        ] {
            let f = fast(&alloc::format!("{head}  {first}\n{tail}"));
            assert_eq!(f[input][v4], 0, "{first}");
        }
        // A second base chain at the hook without the rule: no fast path.
        let two = alloc::format!(
            "{head}  ct state established accept\n }}\n chain j {{\n  type filter hook input priority 10; policy accept;\n  udp dport 9 drop\n{tail}"
        );
        assert_eq!(fast(&two)[input][v4], 0);
        // An empty policy-drop base chain accepts nothing.
        let f = fast("table inet t {\n chain i {\n  type filter hook input priority 0; policy drop;\n }\n}\n");
        assert_eq!(f[input][v4], 0);
    }
}

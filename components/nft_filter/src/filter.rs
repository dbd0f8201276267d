//! The handle a stack or a switch holds: the active [`Ruleset`] behind a
//! generation counter, the connection tracker, and the text interface the
//! control utility drives (`apply`, `list ruleset`, `list counters`).
//!
//! Updates are atomic: [`Filter::prepare`] parses and compiles a change
//! against the current tables without touching the data path (it may run
//! on another thread); [`Filter::install`] swaps the new program in, which
//! the owner does between two batches, so a packet sees the old ruleset or
//! the new one, never a mix. A change that fails to parse or compile
//! changes nothing.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::Ordering;

use crate::ast::{Command, Pos, Stmt, Table};
use crate::compile::{CompileError, Proto, Ruleset};
use crate::conntrack::{Conntrack, CtStats};
use crate::eval::{Ctx, Verdict};
use crate::packet::{LinkType, PacketMeta, View};
use crate::parser::{parse, typed_elem, ParseError};
use crate::types::{Family, Hook};

/// Why a ruleset change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Parse(ParseError),
    Compile(CompileError),
}

impl Error {
    /// Line and column of the problem.
    pub fn pos(&self) -> Pos {
        match self {
            Error::Parse(e) => e.pos,
            Error::Compile(e) => e.pos,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "{e}"),
            Error::Compile(e) => write!(f, "{e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

fn cerr(pos: Pos, message: String) -> Error {
    Error::Compile(CompileError { pos, message })
}

fn max_handle(tables: &[Table]) -> u64 {
    tables
        .iter()
        .flat_map(|t| t.chains.iter())
        .flat_map(|c| c.rules.iter())
        .map(|r| r.handle)
        .max()
        .unwrap_or(0)
}

/// Applies commands to `tables`, giving new rules fresh handles from
/// `first_handle` on (or above the highest handle present).
pub fn apply_commands(
    mut tables: Vec<Table>,
    cmds: Vec<Command>,
    first_handle: u64,
) -> Result<Vec<Table>, Error> {
    let mut next = first_handle.max(max_handle(&tables) + 1);
    let mut handle = || {
        next += 1;
        next - 1
    };
    for cmd in cmds {
        match cmd {
            Command::FlushRuleset => tables.clear(),
            Command::Table(mut t) => {
                for c in &mut t.chains {
                    for r in &mut c.rules {
                        r.handle = handle();
                    }
                }
                let Some(old) = tables
                    .iter_mut()
                    .find(|o| o.family == t.family && o.name == t.name)
                else {
                    tables.push(t);
                    continue;
                };
                for s in t.sets {
                    match old.sets.iter_mut().find(|o| o.name == s.name) {
                        Some(o) if o.key == s.key && o.interval == s.interval => {
                            o.elements.extend(s.elements)
                        }
                        Some(_) => {
                            return Err(cerr(
                                s.pos,
                                alloc::format!(
                                    "set '{}' exists with another type or flags",
                                    s.name
                                ),
                            ))
                        }
                        None => old.sets.push(s),
                    }
                }
                for c in t.chains {
                    match old.chains.iter_mut().find(|o| o.name == c.name) {
                        Some(o) => {
                            if c.base.is_some()
                                && o.base.is_some()
                                && c.base.map(|b| (b.hook, b.priority))
                                    != o.base.map(|b| (b.hook, b.priority))
                            {
                                return Err(cerr(
                                    c.pos,
                                    alloc::format!(
                                        "chain '{}' exists with another hook or priority",
                                        c.name
                                    ),
                                ));
                            }
                            if c.base.is_some() && o.base.is_none() && !o.rules.is_empty() {
                                return Err(cerr(
                                    c.pos,
                                    alloc::format!("chain '{}' exists as a regular chain", c.name),
                                ));
                            }
                            if c.base.is_some() {
                                o.base = c.base;
                            }
                            o.rules.extend(c.rules);
                        }
                        None => old.chains.push(c),
                    }
                }
            }
            Command::AddRule {
                family,
                table,
                chain,
                mut rule,
                pos,
            } => {
                let t = tables
                    .iter_mut()
                    .find(|t| t.family == family && t.name == table)
                    .ok_or_else(|| {
                        cerr(pos, alloc::format!("no table {} {table}", family.name()))
                    })?;
                let c = t
                    .chains
                    .iter_mut()
                    .find(|c| c.name == chain)
                    .ok_or_else(|| {
                        cerr(pos, alloc::format!("no chain '{chain}' in table {table}"))
                    })?;
                rule.handle = handle();
                c.rules.push(rule);
            }
            Command::AddElement {
                family,
                table,
                set,
                elements,
                pos,
            } => {
                let t = tables
                    .iter_mut()
                    .find(|t| t.family == family && t.name == table)
                    .ok_or_else(|| {
                        cerr(pos, alloc::format!("no table {} {table}", family.name()))
                    })?;
                let s =
                    t.sets.iter_mut().find(|s| s.name == set).ok_or_else(|| {
                        cerr(pos, alloc::format!("no set '{set}' in table {table}"))
                    })?;
                for r in elements {
                    let e = typed_elem(s.key, &r.text, r.hi.as_deref(), r.quoted).map_err(|m| {
                        Error::Parse(ParseError {
                            pos: r.pos,
                            token: r.text.clone(),
                            message: m,
                        })
                    })?;
                    if !s.interval && !matches!(e, crate::ast::Elem::Value(_)) {
                        return Err(Error::Parse(ParseError {
                            pos: r.pos,
                            token: r.text.clone(),
                            message: "ranges and prefixes need 'flags interval' in the set".into(),
                        }));
                    }
                    s.elements.push(e);
                }
            }
        }
    }
    Ok(tables)
}

/// Parses and compiles a complete ruleset text (as a file holds it) on its
/// own, without any current state.
pub fn compile_text(text: &str) -> Result<Ruleset, Error> {
    let cmds = parse(text).map_err(Error::Parse)?;
    let tables = apply_commands(Vec::new(), cmds, 1)?;
    Ruleset::compile(tables).map_err(Error::Compile)
}

/// A ruleset build detached from its [`Filter`] ([`Filter::build_job`]):
/// `Send`, so it can run on a helper thread.
pub struct BuildJob {
    text: String,
    tables: Vec<Table>,
    next_handle: u64,
}

impl BuildJob {
    /// Parses and compiles. The result goes to [`Filter::install`].
    pub fn run(self) -> Result<Arc<Ruleset>, Error> {
        let BuildJob {
            text,
            tables,
            next_handle,
        } = self;
        let cmds = parse(&text).map_err(Error::Parse)?;
        let tables = apply_commands(tables, cmds, next_handle)?;
        let rs = Ruleset::compile(tables).map_err(Error::Compile)?;
        Ok(Arc::new(rs))
    }
}

/// The filter of one stack or switch.
pub struct Filter {
    active: Arc<Ruleset>,
    ct: Conntrack,
    generation: u64,
    /// Rule handles are never reused, so counters follow the right rule.
    next_handle: u64,
}

impl Filter {
    /// An accept-all filter with a connection tracker for about
    /// `ct_capacity` flows (the tracker's table is allocated here, once).
    pub fn new(ct_capacity: usize) -> Filter {
        Filter {
            active: Arc::new(Ruleset::empty()),
            ct: Conntrack::new(ct_capacity, 0x5eed_f11e),
            generation: 0,
            next_handle: 1,
        }
    }

    /// Parses `text` (a ruleset file or commands such as `add rule …`) and
    /// compiles the result of applying it to the active tables. Touches
    /// nothing; the result goes to [`Filter::install`].
    pub fn prepare(&self, text: &str) -> Result<Arc<Ruleset>, Error> {
        self.build_job(String::from(text), false).run()
    }

    /// Like [`prepare`](Self::prepare) (or, with `replace`, like
    /// [`replace`](Self::replace)), but as a job that owns what it needs, so
    /// the parse and compile — milliseconds for thousands of rules — can run
    /// on another thread while the data path keeps moving packets. Install
    /// the result with [`install`](Self::install), with no other change to
    /// this filter in between (the job started from its current tables).
    pub fn build_job(&self, text: String, replace: bool) -> BuildJob {
        BuildJob {
            text,
            tables: if replace {
                Vec::new()
            } else {
                self.active.snapshot_tables()
            },
            next_handle: self.next_handle,
        }
    }

    /// The build job for an `nft` control request that changes the ruleset
    /// (docs/INTERNALS.md: `load` + body = replace, `flush ruleset`, or one
    /// nft command given as words); `None` for the requests that change
    /// nothing (`list …`, none at all), which the caller answers at once.
    pub fn request_job(&self, words: &[&str], body: &str) -> Option<BuildJob> {
        match words {
            ["load"] => Some(self.build_job(String::from(body), true)),
            ["flush", "ruleset"] => Some(self.build_job(String::new(), true)),
            ["list", ..] | [] => None,
            _ => Some(self.build_job(words.join(" "), false)),
        }
    }

    /// Swaps `rs` in as the active program (call between batches). Counter
    /// values of rules that survive the change carry over. Returns the new
    /// generation.
    pub fn install(&mut self, mut rs: Arc<Ruleset>) -> u64 {
        rs.inherit_counters(&self.active);
        self.next_handle = self.next_handle.max(max_handle(&rs.tables) + 1);
        self.generation += 1;
        if let Some(r) = Arc::get_mut(&mut rs) {
            r.generation = self.generation;
        }
        self.active = rs;
        self.generation
    }

    /// `prepare` + `install`.
    pub fn apply(&mut self, text: &str) -> Result<u64, Error> {
        let rs = self.prepare(text)?;
        Ok(self.install(rs))
    }

    /// Replaces the whole ruleset by the file `text` (`flush ruleset` first).
    pub fn replace(&mut self, text: &str) -> Result<u64, Error> {
        let rs = self.build_job(String::from(text), true).run()?;
        Ok(self.install(rs))
    }

    /// The active program.
    pub fn ruleset(&self) -> &Arc<Ruleset> {
        &self.active
    }

    /// Generation of the active program (0 = the initial empty one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Connection-tracker statistics.
    pub fn conntrack_stats(&self) -> CtStats {
        self.ct.stats()
    }

    /// Filters one packet at `hook`. `packet` is an IPv4/IPv6 packet
    /// (`LinkType::Ip`) or an Ethernet frame (`LinkType::Ethernet`). At
    /// `Hook::Forward` a frame runs the bridge chains (switch); at
    /// `Input`/`Output` the inet/ip/ip6 chains run on the IP packet (stack),
    /// and a frame given at input also makes `ether` fields available. `now_ns` is a monotonic clock in nanoseconds (conntrack
    /// timeouts, limits). No allocation, no system call.
    pub fn evaluate(
        &mut self,
        hook: Hook,
        link: LinkType,
        packet: &[u8],
        meta: &PacketMeta,
        now_ns: u64,
    ) -> Verdict {
        let mut view = View::parse(packet, link);
        let proto = match (link, hook, view.ipver) {
            // A switch: bridge chains see the whole frame.
            (LinkType::Ethernet, Hook::Forward, _) => Proto::Ether,
            // A stack: IP chains; given the frame, `ether` fields work at
            // input (the kernel reads the received MAC header) but not at
            // output (no link header yet), and lengths are IP lengths.
            (_, _, 4 | 6) => {
                view.len = (view.l3_end - view.l3) as u32;
                if hook == Hook::Output {
                    view.l2 = false;
                }
                if view.ipver == 4 {
                    Proto::V4
                } else {
                    Proto::V6
                }
            }
            // Not an IP packet: no IP hook would see it.
            _ => return Verdict::Accept,
        };
        let rs = &*self.active;
        let ct = if rs.uses_ct {
            Some(self.ct.track(&view, now_ns))
        } else {
            None
        };
        let v = match ct {
            // Every base chain of the hook would accept this state at its
            // first rule (`ct state established,related accept`), with no
            // side effect: the tracker's answer is the verdict.
            Some(c) if c.state & rs.ct_fast[hook.index()][proto as usize] != 0 => Verdict::Accept,
            _ => {
                let mut ctx = Ctx {
                    view: &view,
                    meta,
                    ct,
                    now: now_ns,
                    family: Family::Inet,
                };
                rs.run_hook(hook, proto, &mut ctx)
            }
        };
        if matches!(v, Verdict::Reject(_)) && ct.is_some() {
            self.ct.attach_last();
        }
        if v == Verdict::Accept {
            if let Some(p) = ct.and_then(|c| c.pending) {
                if !self.ct.confirm(&p, now_ns) {
                    // Table full: the kernel drops the packet too.
                    return Verdict::Drop;
                }
            }
        }
        v
    }

    /// `nft list ruleset`-style text with live counter values.
    pub fn list_ruleset(&self) -> String {
        list_tables(&self.active.snapshot())
    }

    /// One line per counter: `<family> <table> <chain> <rule#> packets N bytes M`.
    pub fn list_counters(&self) -> String {
        let mut out = String::new();
        for t in self.active.snapshot() {
            for c in &t.chains {
                for (i, r) in c.rules.iter().enumerate() {
                    for s in &r.stmts {
                        if let Stmt::Counter { packets, bytes } = s {
                            let _ = writeln!(
                                out,
                                "{} {} {} {} packets {} bytes {}",
                                t.family.name(),
                                t.name,
                                c.name,
                                i,
                                packets,
                                bytes
                            );
                        }
                    }
                }
            }
        }
        out
    }
}

/// Prints tables as nft does.
pub fn list_tables(tables: &[Table]) -> String {
    let mut s = String::new();
    for t in tables {
        let _ = write!(s, "{t}");
    }
    s
}

impl Ruleset {
    /// The tables with live counter values and their rule handles, as the
    /// base for an incremental change.
    fn snapshot_tables(&self) -> Vec<Table> {
        let _ = Ordering::Relaxed;
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const BASE: &str = "table inet t {\n chain c {\n  type filter hook input priority 0; policy accept;\n  tcp dport 22 counter drop\n }\n}\n";

    #[test]
    fn ct_fast_path_gives_the_chain_verdicts() {
        let rules = |first: &str| {
            alloc::format!(
                "table inet t {{\n chain i {{\n  type filter hook input priority 0; policy drop;\n  {first}\n  udp dport 7 accept\n  tcp dport 22 accept\n }}\n chain o {{\n  type filter hook output priority 0; policy accept;\n }}\n}}\n"
            )
        };
        let mut fast = Filter::new(64);
        fast.replace(&rules("ct state established,related accept"))
            .unwrap();
        // A counter makes the rule have a side effect: chains are run.
        let mut slow = Filter::new(64);
        slow.replace(&rules("ct state established,related counter accept"))
            .unwrap();
        let input = Hook::Input.index();
        assert_ne!(fast.ruleset().ct_fast[input][0], 0);
        assert_eq!(slow.ruleset().ct_fast[input][0], 0);
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let packets = [
            (Hook::Output, ipv4(b, a, 17, 64, udp(5000, 9, b"q"))),
            (Hook::Input, ipv4(a, b, 17, 64, udp(9, 5000, b"r"))),
            (Hook::Input, ipv4(a, b, 17, 64, udp(9, 5000, b"r"))),
            (Hook::Input, ipv4(a, b, 17, 64, udp(9, 5001, b"new"))),
            (Hook::Input, ipv4(a, b, 17, 64, udp(9, 7, b"new"))),
            (Hook::Input, ipv4(a, b, 17, 64, udp(9, 7, b"again"))),
            (Hook::Output, ipv4(b, a, 17, 64, udp(7, 9, b"answer"))),
            (
                Hook::Input,
                ipv4(a, b, 6, 64, tcp(4000, 22, 0x02, 1, 0, b"")),
            ),
            (
                Hook::Input,
                ipv4(a, b, 6, 64, tcp(4000, 23, 0x10, 1, 1, b"")),
            ),
            (
                Hook::Input,
                ipv4(a, b, 6, 64, tcp(4000, 22, 0x10, 2, 1, b"")),
            ),
            (Hook::Input, ipv4(a, b, 1, 64, icmp(8, 0, 1, 1, b""))),
        ];
        let meta = PacketMeta::default();
        let mut accepted = 0;
        for (i, (hook, p)) in packets.iter().enumerate() {
            let vf = fast.evaluate(*hook, LinkType::Ip, p, &meta, 1000 + i as u64);
            let vs = slow.evaluate(*hook, LinkType::Ip, p, &meta, 1000 + i as u64);
            assert_eq!(vf, vs, "packet {i}");
            accepted += (vf == Verdict::Accept) as u32;
        }
        // output x2, the reply x2, udp 7 x2 (new, then established), tcp 22 x2.
        assert_eq!(accepted, 8);
        assert_eq!(fast.conntrack_stats(), slow.conntrack_stats());
    }

    #[test]
    fn failed_update_changes_nothing() {
        let mut f = Filter::new(64);
        f.replace(BASE).unwrap();
        let before = f.list_ruleset();
        let g = f.generation();
        let e = f
            .apply("add rule inet t c tcp dport 99999 drop")
            .unwrap_err();
        assert_eq!(e.pos(), Pos { line: 1, col: 29 });
        let e = f.apply("add rule inet t nochain accept").unwrap_err();
        assert!(alloc::format!("{e}").starts_with("1:1: no chain"), "{e}");
        assert_eq!((f.list_ruleset(), f.generation()), (before, g));
    }

    #[test]
    fn counters_survive_incremental_updates() {
        let mut f = Filter::new(64);
        f.replace(BASE).unwrap();
        let p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 6, 64, tcp(5, 22, 2, 0, 0, &[]));
        assert_eq!(
            f.evaluate(Hook::Input, LinkType::Ip, &p, &PacketMeta::default(), 0),
            Verdict::Drop
        );
        f.apply("add rule inet t c udp dport 53 counter accept")
            .unwrap();
        assert_eq!(
            f.list_counters(),
            "inet t c 0 packets 1 bytes 40\ninet t c 1 packets 0 bytes 0\n"
        );
        f.apply("table inet t {\n chain c {\n  tcp dport 23 drop\n }\n}\n")
            .unwrap();
        assert_eq!(f.ruleset().rule_count(), 3);
        assert!(f
            .list_ruleset()
            .contains("tcp dport 22 counter packets 1 bytes 40 drop"));
        // A replacement starts from the values written in the text.
        f.replace(&f.list_ruleset()).unwrap();
        assert!(f
            .list_counters()
            .starts_with("inet t c 0 packets 1 bytes 40"));
        f.replace(BASE).unwrap();
        assert!(f
            .list_counters()
            .starts_with("inet t c 0 packets 0 bytes 0"));
    }

    #[test]
    fn rulesets_can_be_built_on_another_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Ruleset>();
        send_sync::<Arc<Ruleset>>();
        let mut f = Filter::new(64);
        f.replace(BASE).unwrap();
        let current = f.ruleset().clone();
        let text = "add rule inet t c udp dport 53 drop";
        // Parse + compile elsewhere (here: a thread), install between batches.
        let built = std::thread::spawn(move || {
            let cmds = crate::parse(text).unwrap();
            let tables = apply_commands(current.snapshot(), cmds, 1000).unwrap();
            Arc::new(Ruleset::compile(tables).unwrap())
        })
        .join()
        .unwrap();
        let g = f.install(built);
        assert_eq!((g, f.ruleset().rule_count()), (2, 2));
    }

    #[test]
    fn build_jobs_run_on_another_thread_and_match_the_direct_path() {
        let mut f = Filter::new(64);
        f.replace(BASE).unwrap();
        // An addition, built from the current tables on a helper thread.
        let job = f.build_job("add rule inet t c udp dport 53 drop".into(), false);
        let built = std::thread::spawn(move || job.run())
            .join()
            .unwrap()
            .unwrap();
        let mut direct = Filter::new(64);
        direct.replace(BASE).unwrap();
        direct.apply("add rule inet t c udp dport 53 drop").unwrap();
        f.install(built);
        assert_eq!(f.list_ruleset(), direct.list_ruleset());
        // A replacement starts from nothing, like `replace`.
        let job = f.build_job(BASE.into(), true);
        f.install(job.run().unwrap());
        direct.replace(BASE).unwrap();
        assert_eq!(f.list_ruleset(), direct.list_ruleset());
        // A bad text fails in the job and the filter keeps its ruleset.
        let before = f.generation();
        let e = f.build_job("table inet t {\n chain c { bogus }\n}".into(), true);
        assert!(e.run().is_err());
        assert_eq!(f.generation(), before);
    }

    #[test]
    fn add_element() {
        let mut f = Filter::new(64);
        f.replace("table ip t {\n set s { type ipv4_addr; flags interval; }\n chain c { type filter hook input priority 0; ip saddr @s drop; }\n}").unwrap();
        let p = ipv4([10, 1, 2, 3], [2, 2, 2, 2], 17, 64, udp(5, 22, &[]));
        assert_eq!(
            f.evaluate(Hook::Input, LinkType::Ip, &p, &PacketMeta::default(), 0),
            Verdict::Accept
        );
        f.apply("add element ip t s { 10.0.0.0/8 }").unwrap();
        assert_eq!(
            f.evaluate(Hook::Input, LinkType::Ip, &p, &PacketMeta::default(), 0),
            Verdict::Drop
        );
        let e = f.apply("add element ip t s { 10.0.0.0/99 }").unwrap_err();
        assert_eq!(
            (e.pos(), alloc::format!("{e}").contains("10.0.0.0/99")),
            (Pos { line: 1, col: 22 }, true)
        );
    }
}

//! The syntax tree of a ruleset, as the parser produces it and as
//! `list ruleset` prints it. Nothing here is validated beyond the grammar:
//! chain names may dangle and jumps may loop until [`crate::compile`] turns
//! the tree into a [`crate::Ruleset`].
//!
//! `Display` prints nft syntax that parses back to the same tree (the
//! property tests check this round trip) and that the real `nft -c -f`
//! accepts.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::types::{DataType, Family, Field, Hook, Literal};

/// Where something was written: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One top-level command of a ruleset file or of the control utility.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `flush ruleset`: remove every table.
    FlushRuleset,
    /// `table <family> <name> { … }` (also `add table …`): create the table
    /// or add to it.
    Table(Table),
    /// `add rule <family> <table> <chain> <rule>`: append a rule.
    AddRule {
        family: Family,
        table: String,
        chain: String,
        rule: Rule,
        pos: Pos,
    },
    /// `add element <family> <table> <set> { … }`.
    AddElement {
        family: Family,
        table: String,
        set: String,
        elements: Vec<RawElement>,
        pos: Pos,
    },
}

/// A table and its contents.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub sets: Vec<SetDecl>,
    pub chains: Vec<Chain>,
    pub pos: Pos,
}

/// A named set: `set s { type ipv4_addr; flags interval; elements = { … } }`.
#[derive(Clone, Debug, PartialEq)]
pub struct SetDecl {
    pub name: String,
    pub key: DataType,
    pub interval: bool,
    pub elements: Vec<Elem>,
    pub pos: Pos,
}

/// Base-chain properties: `type filter hook <hook> priority <p>; policy <v>;`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub hook: Hook,
    pub priority: i32,
    /// The priority as written, for printing (`filter`, `filter + 10`, `-5`).
    pub priority_name: Option<&'static str>,
    pub policy: Policy,
}

/// What happens at the end of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

/// A chain: base (attached to a hook) or regular (reached by jump/goto).
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
    pub pos: Pos,
}

/// A rule: statements evaluated left to right.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub stmts: Vec<Stmt>,
    pub pos: Pos,
    /// Stable identity used to carry counter values across updates (like
    /// nft's rule handle). 0 until the rule is installed.
    pub handle: u64,
}

/// One statement of a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Match(Match),
    /// `counter [packets N bytes M]`.
    Counter {
        packets: u64,
        bytes: u64,
    },
    /// `limit rate [over] N/unit [burst B packets]`.
    Limit {
        rate: u64,
        per: RateUnit,
        burst: u32,
        over: bool,
    },
    /// `log [prefix "…"]` (recorded, no output on the data path).
    Log {
        prefix: Option<String>,
    },
    /// A verdict ends the rule.
    Verdict(Verdict),
    /// `<field> vmap { value : verdict, … }`.
    Vmap {
        field: Field,
        map: Vec<(Elem, Verdict)>,
    },
}

/// Time unit of a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    pub fn name(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        }
    }
    pub fn nanos(self) -> u64 {
        match self {
            RateUnit::Second => 1_000_000_000,
            RateUnit::Minute => 60_000_000_000,
            RateUnit::Hour => 3_600_000_000_000,
            RateUnit::Day => 86_400_000_000_000,
        }
    }
}

/// A verdict statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Accept,
    Drop,
    Reject(RejectWith),
    Jump(String),
    Goto(String),
    Return,
}

/// How `reject` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectWith {
    /// Plain `reject`: ICMP(v6) port unreachable for the packet's family.
    Default,
    /// `reject with icmp type <code-name>` (IPv4 only): destination
    /// unreachable with this code.
    Icmp(u8),
    /// `reject with icmpv6 type <code-name>` (IPv6 only).
    Icmpv6(u8),
    /// `reject with icmpx type <name>`: family-independent code
    /// (0 no-route, 1 port-unreachable, 2 host-unreachable, 3 admin-prohibited).
    Icmpx(u8),
    /// `reject with tcp reset` (TCP packets only).
    TcpReset,
}

/// Comparison operator of a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// No operator written: equality, or `x & v != 0` for bitmask types.
    Implicit,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Implicit => "",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Gt => ">",
            CmpOp::Le => "<=",
            CmpOp::Ge => ">=",
        }
    }
}

/// `<field> [& mask] [op] <rhs>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub field: Field,
    pub mask: Option<u128>,
    pub op: CmpOp,
    pub rhs: Rhs,
}

/// Right-hand side of a match.
#[derive(Clone, Debug, PartialEq)]
pub enum Rhs {
    Elem(Elem),
    /// Anonymous set `{ a, b-c, d/len }`.
    Set(Vec<Elem>),
    /// Named set `@name`.
    Named(String),
}

/// An element of `add element`, as written (its type comes from the set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawElement {
    pub text: String,
    /// Upper end of `a - b`.
    pub hi: Option<String>,
    pub quoted: bool,
    pub pos: Pos,
}

/// A value, a range or a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    Value(u128),
    Range(u128, u128),
    Prefix(u128, u8),
}

/// Prints an element of type `t`.
pub struct ElemFmt(pub DataType, pub Elem);

impl fmt::Display for ElemFmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ElemFmt(t, e) = *self;
        match e {
            Elem::Value(v) => write!(f, "{}", Literal(t, v)),
            Elem::Range(a, b) => write!(f, "{}-{}", Literal(t, a), Literal(t, b)),
            Elem::Prefix(a, l) => write!(f, "{}/{}", Literal(t, a), l),
        }
    }
}

fn write_elems(f: &mut fmt::Formatter<'_>, t: DataType, elems: &[Elem]) -> fmt::Result {
    f.write_str("{ ")?;
    for (i, e) in elems.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}", ElemFmt(t, *e))?;
    }
    f.write_str(" }")
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Reject(RejectWith::Default) => f.write_str("reject"),
            Verdict::Reject(RejectWith::TcpReset) => f.write_str("reject with tcp reset"),
            Verdict::Reject(RejectWith::Icmp(c)) => {
                write!(f, "reject with icmp type {}", icmp_code_name(*c))
            }
            Verdict::Reject(RejectWith::Icmpv6(c)) => {
                write!(f, "reject with icmpv6 type {}", icmpv6_code_name(*c))
            }
            Verdict::Reject(RejectWith::Icmpx(c)) => {
                write!(f, "reject with icmpx type {}", icmpx_code_name(*c))
            }
        }
    }
}

/// ICMPv4 destination-unreachable codes usable in `reject with icmp type`.
pub(crate) const ICMP_CODES: &[(&str, u8)] = &[
    ("net-unreachable", 0),
    ("host-unreachable", 1),
    ("prot-unreachable", 2),
    ("port-unreachable", 3),
    ("net-prohibited", 9),
    ("host-prohibited", 10),
    ("admin-prohibited", 13),
];
/// ICMPv6 destination-unreachable codes.
pub(crate) const ICMPV6_CODES: &[(&str, u8)] = &[
    ("no-route", 0),
    ("admin-prohibited", 1),
    ("addr-unreachable", 3),
    ("port-unreachable", 4),
    ("policy-fail", 5),
    ("reject-route", 6),
];
/// icmpx codes (NFT_REJECT_ICMPX_*).
pub(crate) const ICMPX_CODES: &[(&str, u8)] = &[
    ("no-route", 0),
    ("port-unreachable", 1),
    ("host-unreachable", 2),
    ("admin-prohibited", 3),
];

fn code_name(table: &[(&'static str, u8)], c: u8) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == c)
        .map(|(n, _)| *n)
        .unwrap_or("port-unreachable")
}
fn icmp_code_name(c: u8) -> &'static str {
    code_name(ICMP_CODES, c)
}
fn icmpv6_code_name(c: u8) -> &'static str {
    code_name(ICMPV6_CODES, c)
}
fn icmpx_code_name(c: u8) -> &'static str {
    code_name(ICMPX_CODES, c)
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, n) = self.field.keywords();
        let t = self.field.data_type();
        write!(f, "{p} {n}")?;
        if let Some(m) = self.mask {
            write!(f, " & ")?;
            if t.is_bitmask() && m.count_ones() > 1 {
                // `tcp flags & (syn | ack)`
                f.write_str("(")?;
                let mut first = true;
                for bit in 0..t.bits() {
                    if m & (1u128 << bit) != 0 {
                        if !first {
                            f.write_str(" | ")?;
                        }
                        first = false;
                        write!(f, "{}", Literal(t, 1u128 << bit))?;
                    }
                }
                f.write_str(")")?;
            } else {
                write!(f, "{}", Literal(t, m))?;
            }
        }
        if self.op != CmpOp::Implicit {
            write!(f, " {}", self.op.symbol())?;
        }
        match &self.rhs {
            Rhs::Elem(e) => write!(f, " {}", ElemFmt(t, *e)),
            Rhs::Set(es) => {
                f.write_str(" ")?;
                write_elems(f, t, es)
            }
            Rhs::Named(s) => write!(f, " @{s}"),
        }
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Match(m) => write!(f, "{m}"),
            Stmt::Counter { packets, bytes } => {
                write!(f, "counter packets {packets} bytes {bytes}")
            }
            Stmt::Limit {
                rate,
                per,
                burst,
                over,
            } => {
                write!(
                    f,
                    "limit rate {}{rate}/{}",
                    if *over { "over " } else { "" },
                    per.name()
                )?;
                if *burst != 5 {
                    write!(f, " burst {burst} packets")?;
                }
                Ok(())
            }
            Stmt::Log { prefix: Some(p) } => write!(f, "log prefix \"{p}\""),
            Stmt::Log { prefix: None } => f.write_str("log"),
            Stmt::Verdict(v) => write!(f, "{v}"),
            Stmt::Vmap { field, map } => {
                let (p, n) = field.keywords();
                write!(f, "{p} {n} vmap {{ ")?;
                for (i, (e, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{} : {v}", ElemFmt(field.data_type(), *e))?;
                }
                f.write_str(" }")
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stmts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {} {} {{", self.family.name(), self.name)?;
        for s in &self.sets {
            writeln!(f, "\tset {} {{", s.name)?;
            writeln!(f, "\t\ttype {}", s.key.set_type_name().unwrap_or("?"))?;
            if s.interval {
                writeln!(f, "\t\tflags interval")?;
            }
            if !s.elements.is_empty() {
                f.write_str("\t\telements = ")?;
                write_elems(f, s.key, &s.elements)?;
                writeln!(f)?;
            }
            writeln!(f, "\t}}")?;
        }
        for c in &self.chains {
            writeln!(f, "\tchain {} {{", c.name)?;
            if let Some(b) = &c.base {
                f.write_str("\t\ttype filter hook ")?;
                f.write_str(b.hook.name())?;
                f.write_str(" priority ")?;
                match b.priority_name {
                    Some(n) => {
                        let base = crate::parser::priority_value(self.family, n).unwrap_or(0);
                        let d = b.priority - base;
                        match d.cmp(&0) {
                            core::cmp::Ordering::Equal => write!(f, "{n}")?,
                            core::cmp::Ordering::Greater => write!(f, "{n} + {d}")?,
                            core::cmp::Ordering::Less => write!(f, "{n} - {}", -(d as i64))?,
                        }
                    }
                    None => write!(f, "{}", b.priority)?,
                }
                writeln!(
                    f,
                    "; policy {};",
                    if b.policy == Policy::Accept {
                        "accept"
                    } else {
                        "drop"
                    }
                )?;
            }
            for r in &c.rules {
                writeln!(f, "\t\t{r}")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}

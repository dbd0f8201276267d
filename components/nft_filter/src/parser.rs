//! The nft language subset: a nom lexer that cuts the text into tokens
//! carrying line and column, and a recursive-descent grammar over those
//! tokens that builds the [`crate::ast`] tree. Every error names the line,
//! the column and the offending token. The subset is described in
//! `SUBSET.md`.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use nom::branch::alt;
use nom::bytes::complete::{is_not, tag, take_while1};
use nom::character::complete::char as ch;
use nom::combinator::{map, recognize};
use nom::sequence::{delimited, pair};
use nom::{IResult, Parser};

use crate::ast::*;
use crate::types::{parse_literal, DataType, Family, Field, Hook};

/// A parse error: where, what was found there, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub pos: Pos,
    /// The offending token as written (empty at end of input).
    pub token: String,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "{}: {} (at end of input)", self.pos, self.message)
        } else {
            write!(f, "{}: {} (at '{}')", self.pos, self.message, self.token)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    Str(&'a str),
    LBrace,
    RBrace,
    LParen,
    RParen,
    Semi,
    Comma,
    Newline,
    Amp,
    Pipe,
    Plus,
    At,
    Assign,
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
    Eof,
}

#[derive(Clone, Debug)]
struct Token<'a> {
    tok: Tok<'a>,
    pos: Pos,
    text: &'a str,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-' | '*' | '$')
}

/// One token (without leading blanks).
fn token(i: &str) -> IResult<&str, Tok<'_>> {
    alt((
        map(
            delimited(
                ch('"'),
                recognize(nom::combinator::opt(is_not("\"\n"))),
                ch('"'),
            ),
            Tok::Str,
        ),
        map(tag("=="), |_| Tok::Eq),
        map(tag("!="), |_| Tok::Ne),
        map(tag("<="), |_| Tok::Le),
        map(tag(">="), |_| Tok::Ge),
        map(ch('<'), |_| Tok::Lt),
        map(ch('>'), |_| Tok::Gt),
        map(ch('='), |_| Tok::Assign),
        map(ch('{'), |_| Tok::LBrace),
        map(ch('}'), |_| Tok::RBrace),
        map(ch('('), |_| Tok::LParen),
        map(ch(')'), |_| Tok::RParen),
        map(ch(';'), |_| Tok::Semi),
        map(ch(','), |_| Tok::Comma),
        map(ch('&'), |_| Tok::Amp),
        map(ch('|'), |_| Tok::Pipe),
        map(ch('+'), |_| Tok::Plus),
        map(ch('@'), |_| Tok::At),
        map(alt((tag("\r\n"), tag("\n"))), |_| Tok::Newline),
        map(take_while1(is_word_char), Tok::Word),
    ))
    .parse(i)
}

/// Blanks, comments and backslash-newline continuations.
fn blanks(i: &str) -> IResult<&str, ()> {
    let mut rest = i;
    loop {
        let before = rest.len();
        let r: IResult<&str, &str> = alt((
            take_while1(|c| c == ' ' || c == '\t'),
            recognize(pair(ch('#'), nom::combinator::opt(is_not("\n")))),
            tag("\\\n"),
        ))
        .parse(rest);
        match r {
            Ok((r, _)) if r.len() < before => rest = r,
            _ => return Ok((rest, ())),
        }
    }
}

struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(src: &str) -> Self {
        let mut starts = alloc::vec![0];
        starts.extend(
            src.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }
    fn pos(&self, src: &str, off: usize) -> Pos {
        let line = self.starts.partition_point(|&s| s <= off);
        let start = self.starts[line - 1];
        let col = src[start..off].chars().count() + 1;
        Pos {
            line: line as u32,
            col: col as u32,
        }
    }
}

fn lex(src: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let idx = LineIndex::new(src);
    let mut out = Vec::new();
    let mut rest = src;
    loop {
        let (r, ()) = blanks(rest).unwrap_or((rest, ()));
        rest = r;
        let off = src.len() - rest.len();
        if rest.is_empty() {
            out.push(Token {
                tok: Tok::Eof,
                pos: idx.pos(src, off),
                text: "",
            });
            return Ok(out);
        }
        match token(rest) {
            Ok((r, tok)) => {
                let text = &rest[..rest.len() - r.len()];
                out.push(Token {
                    tok,
                    pos: idx.pos(src, off),
                    text,
                });
                rest = r;
            }
            Err(_) => {
                let c = rest.chars().next().unwrap_or(' ');
                let message = if c == '"' {
                    "unterminated string".to_owned()
                } else {
                    format!("unexpected character '{c}'")
                };
                return Err(ParseError {
                    pos: idx.pos(src, off),
                    token: c.to_string(),
                    message,
                });
            }
        }
    }
}

/// Value of a priority keyword for a family (nft's standard priorities).
pub(crate) fn priority_value(family: Family, name: &str) -> Option<i32> {
    if family == Family::Bridge {
        return Some(match name {
            "dstnat" => -300,
            "filter" => -200,
            "out" => 100,
            "srcnat" => 300,
            _ => return None,
        });
    }
    Some(match name {
        "raw" => -300,
        "mangle" => -150,
        "dstnat" => -100,
        "filter" => 0,
        "security" => 50,
        "srcnat" => 100,
        _ => return None,
    })
}

fn priority_static_name(name: &str) -> Option<&'static str> {
    [
        "raw", "mangle", "dstnat", "filter", "security", "srcnat", "out",
    ]
    .into_iter()
    .find(|n| *n == name)
}

/// Parse a whole ruleset file or control command text.
pub fn parse(src: &str) -> Result<Vec<Command>, ParseError> {
    let toks = lex(src)?;
    let mut p = P { t: &toks, i: 0 };
    let mut cmds = Vec::new();
    loop {
        p.skip_seps();
        if p.peek() == &Tok::Eof {
            return Ok(cmds);
        }
        cmds.push(p.command()?);
        match p.peek() {
            Tok::Newline | Tok::Semi | Tok::Eof => {}
            _ => return Err(p.err("expected end of command")),
        }
    }
}

struct P<'t, 'a> {
    t: &'t [Token<'a>],
    i: usize,
}

type R<T> = Result<T, ParseError>;

impl<'a> P<'_, 'a> {
    fn peek(&self) -> &Tok<'a> {
        &self.t[self.i].tok
    }
    fn peek_at(&self, n: usize) -> &Tok<'a> {
        &self.t[(self.i + n).min(self.t.len() - 1)].tok
    }
    fn pos(&self) -> Pos {
        self.t[self.i].pos
    }
    fn bump(&mut self) -> &Token<'a> {
        let t = &self.t[self.i];
        if self.i + 1 < self.t.len() {
            self.i += 1;
        }
        t
    }
    fn err(&self, message: impl Into<String>) -> ParseError {
        let t = &self.t[self.i];
        let token = if t.tok == Tok::Newline {
            "newline".to_owned()
        } else {
            t.text.to_owned()
        };
        ParseError {
            pos: t.pos,
            token,
            message: message.into(),
        }
    }
    fn err_at(&self, at: usize, message: impl Into<String>) -> ParseError {
        let t = &self.t[at];
        ParseError {
            pos: t.pos,
            token: t.text.to_owned(),
            message: message.into(),
        }
    }
    /// nft needs a newline or `;` after each item of a block (a rule, a
    /// chain's `type …`/`policy …`, a set's `type`/`flags`, a chain or set
    /// inside a table), even before the closing `}`.
    fn end_item(&self, what: &str) -> R<()> {
        match self.peek() {
            Tok::Newline | Tok::Semi => Ok(()),
            _ => Err(self.err(format!("expected a newline or ';' after {what}"))),
        }
    }

    fn skip_seps(&mut self) {
        while matches!(self.peek(), Tok::Newline | Tok::Semi) {
            self.bump();
        }
    }
    fn skip_newlines(&mut self) {
        while matches!(self.peek(), Tok::Newline) {
            self.bump();
        }
    }
    fn expect(&mut self, t: Tok<'static>, what: &str) -> R<()> {
        if *self.peek() == t {
            self.bump();
            Ok(())
        } else {
            Err(self.err(format!("expected {what}")))
        }
    }
    fn word(&mut self, what: &str) -> R<&'a str> {
        match *self.peek() {
            Tok::Word(w) => {
                self.bump();
                Ok(w)
            }
            _ => Err(self.err(format!("expected {what}"))),
        }
    }
    fn keyword(&mut self, kw: &str) -> R<()> {
        match *self.peek() {
            Tok::Word(w) if w == kw => {
                self.bump();
                Ok(())
            }
            _ => Err(self.err(format!("expected '{kw}'"))),
        }
    }
    fn is_word(&self, kw: &str) -> bool {
        matches!(*self.peek(), Tok::Word(w) if w == kw)
    }
    fn identifier(&mut self, what: &str) -> R<String> {
        let at = self.i;
        let w = self.word(what)?;
        let ok = w
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            && w.len() <= 64;
        if !ok {
            return Err(self.err_at(at, format!("'{w}' is not a valid {what}")));
        }
        Ok(w.to_owned())
    }
    fn family(&mut self) -> R<Family> {
        let at = self.i;
        let w = self.word("a family (inet, ip, ip6, bridge)")?;
        Family::from_name(w)
            .ok_or_else(|| self.err_at(at, "unknown family; expected inet, ip, ip6 or bridge"))
    }
    fn number<T: core::str::FromStr>(&mut self, what: &str) -> R<T> {
        let at = self.i;
        let w = self.word(what)?;
        w.parse()
            .map_err(|_| self.err_at(at, format!("expected {what}")))
    }

    fn command(&mut self) -> R<Command> {
        let pos = self.pos();
        let at = self.i;
        let w = self.word("a command (table, flush ruleset, add rule, add element)")?;
        match w {
            "flush" => {
                self.keyword("ruleset")?;
                Ok(Command::FlushRuleset)
            }
            "table" => self.table(pos).map(Command::Table),
            "add" => {
                let at2 = self.i;
                match self.word("table, chain, rule or element")? {
                    "table" => self.table(pos).map(Command::Table),
                    "chain" => {
                        let family = self.family()?;
                        let tname = self.identifier("table name")?;
                        let cpos = self.pos();
                        let cname = self.identifier("chain name")?;
                        let chain = if *self.peek() == Tok::LBrace {
                            self.bump();
                            let c = self.chain_body(family, cname, cpos)?;
                            self.expect(Tok::RBrace, "'}'")?;
                            c
                        } else {
                            Chain {
                                name: cname,
                                base: None,
                                rules: Vec::new(),
                                pos: cpos,
                            }
                        };
                        Ok(Command::Table(Table {
                            family,
                            name: tname,
                            sets: Vec::new(),
                            chains: alloc::vec![chain],
                            pos,
                        }))
                    }
                    "rule" => {
                        let family = self.family()?;
                        let table = self.identifier("table name")?;
                        let chain = self.identifier("chain name")?;
                        let rule = self.rule(family)?;
                        Ok(Command::AddRule {
                            family,
                            table,
                            chain,
                            rule,
                            pos,
                        })
                    }
                    "element" => {
                        let family = self.family()?;
                        let table = self.identifier("table name")?;
                        let set = self.identifier("set name")?;
                        // The element type is known only once the set is
                        // resolved; keep the raw words and type them then.
                        let elements = self.untyped_elems()?;
                        Ok(Command::AddElement {
                            family,
                            table,
                            set,
                            elements,
                            pos,
                        })
                    }
                    _ => {
                        Err(self.err_at(at2, "expected table, chain, rule or element after 'add'"))
                    }
                }
            }
            _ => Err(self.err_at(
                at,
                "unknown command; expected table, flush ruleset, add rule or add element",
            )),
        }
    }

    fn table(&mut self, pos: Pos) -> R<Table> {
        let family = self.family()?;
        let name = self.identifier("table name")?;
        let mut t = Table {
            family,
            name,
            sets: Vec::new(),
            chains: Vec::new(),
            pos,
        };
        if *self.peek() != Tok::LBrace {
            return Ok(t);
        }
        self.bump();
        loop {
            self.skip_seps();
            let at = self.i;
            match *self.peek() {
                Tok::RBrace => {
                    self.bump();
                    return Ok(t);
                }
                Tok::Word("chain") => {
                    self.bump();
                    let cpos = self.pos();
                    let cname = self.identifier("chain name")?;
                    self.expect(Tok::LBrace, "'{'")?;
                    let c = self.chain_body(family, cname, cpos)?;
                    self.expect(Tok::RBrace, "'}'")?;
                    self.end_item("a chain")?;
                    t.chains.push(c);
                }
                Tok::Word("set") => {
                    self.bump();
                    let spos = self.pos();
                    let sname = self.identifier("set name")?;
                    self.expect(Tok::LBrace, "'{'")?;
                    t.sets.push(self.set_body(sname, spos)?);
                    self.end_item("a set")?;
                }
                _ => return Err(self.err_at(at, "expected 'chain', 'set' or '}' in table")),
            }
        }
    }

    fn set_body(&mut self, name: String, pos: Pos) -> R<SetDecl> {
        let mut key = None;
        let mut interval = false;
        let mut raw: Option<(usize, Vec<RawElem<'a>>)> = None;
        loop {
            self.skip_seps();
            let at = self.i;
            match *self.peek() {
                Tok::RBrace => {
                    self.bump();
                    break;
                }
                Tok::Word("type") => {
                    self.bump();
                    let at = self.i;
                    let w = self.word("a set type")?;
                    key = Some(DataType::from_set_type_name(w).ok_or_else(|| {
                        self.err_at(at, "unsupported set type; expected ipv4_addr, ipv6_addr, inet_service, inet_proto, mark, ifname, ether_addr, ether_type, icmp_type or ct_state")
                    })?);
                    self.end_item("the set type")?;
                }
                Tok::Word("flags") => {
                    self.bump();
                    loop {
                        let at = self.i;
                        match self.word("a set flag")? {
                            "interval" => interval = true,
                            "constant" => {}
                            _ => {
                                return Err(self.err_at(
                                    at,
                                    "unsupported set flag; expected interval or constant",
                                ))
                            }
                        }
                        if *self.peek() != Tok::Comma {
                            break;
                        }
                        self.bump();
                    }
                    self.end_item("the set flags")?;
                }
                Tok::Word("elements") => {
                    self.bump();
                    self.expect(Tok::Assign, "'='")?;
                    let at = self.i;
                    raw = Some((at, self.raw_elems()?));
                }
                _ => {
                    return Err(
                        self.err_at(at, "expected 'type', 'flags', 'elements' or '}' in set")
                    )
                }
            }
        }
        let Some(key) = key else {
            return Err(ParseError {
                pos,
                token: name,
                message: "set has no 'type'".into(),
            });
        };
        let mut elements = Vec::new();
        if let Some((_, raw)) = raw {
            for r in raw {
                let e = self.type_elem(key, &r)?;
                if !interval && !matches!(e, Elem::Value(_)) {
                    return Err(
                        self.err_at(r.at, "ranges and prefixes need 'flags interval' in the set")
                    );
                }
                elements.push(e);
            }
        }
        Ok(SetDecl {
            name,
            key,
            interval,
            elements,
            pos,
        })
    }

    fn chain_body(&mut self, family: Family, name: String, pos: Pos) -> R<Chain> {
        let mut c = Chain {
            name,
            base: None,
            rules: Vec::new(),
            pos,
        };
        loop {
            self.skip_seps();
            match *self.peek() {
                Tok::RBrace => return Ok(c),
                Tok::Word("type") => {
                    self.bump();
                    self.keyword("filter").map_err(|mut e| {
                        e.message = "only chains of type 'filter' are supported".into();
                        e
                    })?;
                    self.keyword("hook")?;
                    let at = self.i;
                    let h = self.word("a hook (input, output, forward)")?;
                    let hook = Hook::from_name(h).ok_or_else(|| {
                        self.err_at(at, "unsupported hook; expected input, output or forward")
                    })?;
                    self.keyword("priority")?;
                    let (priority, priority_name) = self.priority(family)?;
                    let policy = c.base.map(|b| b.policy).unwrap_or(Policy::Accept);
                    c.base = Some(BaseChain {
                        hook,
                        priority,
                        priority_name,
                        policy,
                    });
                    self.end_item("the chain type")?;
                }
                Tok::Word("policy") => {
                    self.bump();
                    let at = self.i;
                    let policy = match self.word("accept or drop")? {
                        "accept" => Policy::Accept,
                        "drop" => Policy::Drop,
                        _ => return Err(self.err_at(at, "policy must be accept or drop")),
                    };
                    match &mut c.base {
                        Some(b) => b.policy = policy,
                        None => {
                            return Err(self.err_at(
                                at,
                                "policy needs a base chain ('type filter hook …' first)",
                            ))
                        }
                    }
                    self.end_item("the policy")?;
                }
                _ => {
                    let r = self.rule(family)?;
                    self.end_item("a rule")?;
                    c.rules.push(r);
                }
            }
        }
    }

    fn priority(&mut self, family: Family) -> R<(i32, Option<&'static str>)> {
        let at = self.i;
        let w = self.word("a priority (integer or filter, raw, mangle, …)")?;
        if let Ok(v) = w.parse::<i32>() {
            return Ok((v, None));
        }
        let base = priority_value(family, w)
            .ok_or_else(|| self.err_at(at, "unknown priority name for this family"))?;
        let name = priority_static_name(w);
        let sign = match self.peek() {
            Tok::Plus => 1,
            Tok::Word("-") => -1,
            _ => return Ok((base, name)),
        };
        self.bump();
        let d: i32 = self.number("a priority offset")?;
        Ok((base + sign * d, name))
    }

    /// Statements up to the end of the rule (newline, `;`, `}` or EOF).
    fn rule(&mut self, family: Family) -> R<Rule> {
        let pos = self.pos();
        let mut stmts = Vec::new();
        let mut terminal_at: Option<usize> = None;
        while !matches!(
            self.peek(),
            Tok::Newline | Tok::Semi | Tok::RBrace | Tok::Eof
        ) {
            if let Some(_t) = terminal_at {
                return Err(self.err("statement after a verdict"));
            }
            let s = self.stmt(family)?;
            if matches!(s, Stmt::Verdict(_) | Stmt::Vmap { .. }) {
                terminal_at = Some(self.i);
            }
            stmts.push(s);
        }
        if stmts.is_empty() {
            return Err(self.err("expected a rule"));
        }
        Ok(Rule {
            stmts,
            pos,
            handle: 0,
        })
    }

    fn stmt(&mut self, family: Family) -> R<Stmt> {
        let at = self.i;
        let w = match *self.peek() {
            Tok::Word(w) => w,
            _ => return Err(self.err("expected a match or a statement")),
        };
        match w {
            "accept" | "drop" | "return" => {
                self.bump();
                Ok(Stmt::Verdict(match w {
                    "accept" => Verdict::Accept,
                    "drop" => Verdict::Drop,
                    _ => Verdict::Return,
                }))
            }
            "jump" | "goto" => {
                self.bump();
                let c = self.identifier("chain name")?;
                Ok(Stmt::Verdict(if w == "jump" {
                    Verdict::Jump(c)
                } else {
                    Verdict::Goto(c)
                }))
            }
            "reject" => {
                self.bump();
                if !self.is_word("with") {
                    return Ok(Stmt::Verdict(Verdict::Reject(RejectWith::Default)));
                }
                self.bump();
                let at = self.i;
                let kind = self.word("icmp, icmpv6, icmpx or tcp")?;
                if kind == "tcp" {
                    self.keyword("reset")?;
                    return Ok(Stmt::Verdict(Verdict::Reject(RejectWith::TcpReset)));
                }
                let table = match kind {
                    "icmp" => ICMP_CODES,
                    "icmpv6" => ICMPV6_CODES,
                    "icmpx" => ICMPX_CODES,
                    _ => {
                        return Err(self.err_at(
                            at,
                            "expected icmp, icmpv6, icmpx or tcp after 'reject with'",
                        ))
                    }
                };
                if (kind == "icmp" && family == Family::Ip6)
                    || (kind == "icmpv6" && family == Family::Ip)
                {
                    return Err(self.err_at(at, "reject type does not fit the table family"));
                }
                if self.is_word("type") {
                    self.bump();
                }
                let at = self.i;
                let code = self.word("a reject code name")?;
                let c = table
                    .iter()
                    .find(|(n, _)| *n == code)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| self.err_at(at, format!("unknown {kind} reject code")))?;
                Ok(Stmt::Verdict(Verdict::Reject(match kind {
                    "icmp" => RejectWith::Icmp(c),
                    "icmpv6" => RejectWith::Icmpv6(c),
                    _ => RejectWith::Icmpx(c),
                })))
            }
            "counter" => {
                self.bump();
                let (mut packets, mut bytes) = (0, 0);
                if self.is_word("packets") {
                    self.bump();
                    packets = self.number("a packet count")?;
                    self.keyword("bytes")?;
                    bytes = self.number("a byte count")?;
                }
                Ok(Stmt::Counter { packets, bytes })
            }
            "limit" => {
                self.bump();
                self.keyword("rate")?;
                let over = self.is_word("over");
                if over {
                    self.bump();
                }
                let at = self.i;
                let w = self.word("a rate such as 10/second")?;
                let (n, unit) = w
                    .split_once('/')
                    .ok_or_else(|| self.err_at(at, "expected a rate such as 10/second"))?;
                let rate: u64 = n
                    .parse()
                    .ok()
                    .filter(|&r| r > 0)
                    .ok_or_else(|| self.err_at(at, "rate must be a positive integer"))?;
                let per = match unit {
                    "second" => RateUnit::Second,
                    "minute" => RateUnit::Minute,
                    "hour" => RateUnit::Hour,
                    "day" => RateUnit::Day,
                    _ => {
                        return Err(self.err_at(at, "rate unit must be second, minute, hour or day"))
                    }
                };
                let mut burst = 5;
                if self.is_word("burst") {
                    self.bump();
                    burst = self.number("a burst size")?;
                    if self.is_word("packets") {
                        self.bump();
                    }
                }
                Ok(Stmt::Limit {
                    rate,
                    per,
                    burst,
                    over,
                })
            }
            "log" => {
                self.bump();
                let mut prefix = None;
                if self.is_word("prefix") {
                    self.bump();
                    match *self.peek() {
                        Tok::Str(s) => {
                            prefix = Some(s.to_owned());
                            self.bump();
                        }
                        _ => return Err(self.err("expected a quoted log prefix")),
                    }
                }
                Ok(Stmt::Log { prefix })
            }
            _ => {
                let _ = at;
                let field = self.field()?;
                self.match_rest(field)
            }
        }
    }

    fn field(&mut self) -> R<Field> {
        let at = self.i;
        let w = self.word("a match")?;
        // `iifname`, `oifname` and `mark` may be written without `meta`.
        if let Some(f) = Field::lookup("meta", w)
            .filter(|f| matches!(f, Field::MetaIifname | Field::MetaOifname | Field::MetaMark))
        {
            return Ok(f);
        }
        if !Field::is_protocol_keyword(w) {
            return Err(self.err_at(at, "unknown statement or match"));
        }
        let at2 = self.i;
        let n = self.word("a field")?;
        Field::lookup(w, n).ok_or_else(|| self.err_at(at2, format!("unsupported field '{w} {n}'")))
    }

    fn match_rest(&mut self, field: Field) -> R<Stmt> {
        let t = field.data_type();
        if self.is_word("vmap") {
            self.bump();
            return self.vmap(field);
        }
        let mut mask = None;
        if *self.peek() == Tok::Amp {
            self.bump();
            let m = if *self.peek() == Tok::LParen {
                self.bump();
                let mut m = 0u128;
                loop {
                    m |= self.literal(t)?;
                    match self.peek() {
                        Tok::Pipe => {
                            self.bump();
                        }
                        Tok::RParen => {
                            self.bump();
                            break;
                        }
                        _ => return Err(self.err("expected '|' or ')'")),
                    }
                }
                m
            } else {
                self.literal(t)?
            };
            mask = Some(m);
        }
        let op = match self.peek() {
            Tok::Eq => CmpOp::Eq,
            Tok::Ne => CmpOp::Ne,
            Tok::Lt => CmpOp::Lt,
            Tok::Gt => CmpOp::Gt,
            Tok::Le => CmpOp::Le,
            Tok::Ge => CmpOp::Ge,
            _ => CmpOp::Implicit,
        };
        if op != CmpOp::Implicit {
            self.bump();
        }
        if mask.is_some() && op == CmpOp::Implicit {
            return Err(self.err("expected '==' or '!=' after a mask"));
        }
        let at = self.i;
        let rhs = match *self.peek() {
            Tok::LBrace => {
                let raw = self.raw_elems()?;
                let mut es = Vec::with_capacity(raw.len());
                for r in &raw {
                    es.push(self.type_elem(t, r)?);
                }
                Rhs::Set(es)
            }
            Tok::At => {
                self.bump();
                Rhs::Named(self.identifier("set name")?)
            }
            _ => {
                let r = self.raw_elem()?;
                let mut e = self.type_elem(t, &r)?;
                // `ct state established,related`: a list of flags is their union.
                if t.is_bitmask() {
                    while matches!(self.peek(), Tok::Comma | Tok::Pipe) {
                        self.bump();
                        let v = self.literal(t)?;
                        if let Elem::Value(x) = e {
                            e = Elem::Value(x | v);
                        }
                    }
                }
                Rhs::Elem(e)
            }
        };
        if matches!(op, CmpOp::Lt | CmpOp::Gt | CmpOp::Le | CmpOp::Ge)
            && !matches!(rhs, Rhs::Elem(Elem::Value(_)))
        {
            return Err(self.err_at(at, "ordering comparisons need a single value"));
        }
        if mask.is_some() && !matches!(rhs, Rhs::Elem(Elem::Value(_))) {
            return Err(self.err_at(at, "a masked match needs a single value"));
        }
        Ok(Stmt::Match(Match {
            field,
            mask,
            op,
            rhs,
        }))
    }

    fn vmap(&mut self, field: Field) -> R<Stmt> {
        let t = field.data_type();
        self.expect(Tok::LBrace, "'{'")?;
        let mut map = Vec::new();
        loop {
            self.skip_newlines();
            if *self.peek() == Tok::RBrace {
                self.bump();
                break;
            }
            let r = self.raw_elem()?;
            // `22 : accept`, also `22: accept`.
            let r = if r.text.len() > 1
                && r.text.ends_with(':')
                && !matches!(self.peek(), Tok::Word(":"))
            {
                RawElem {
                    text: &r.text[..r.text.len() - 1],
                    ..r
                }
            } else {
                self.skip_newlines();
                match *self.peek() {
                    Tok::Word(":") => {
                        self.bump();
                    }
                    _ => return Err(self.err("expected ':' in verdict map")),
                }
                r
            };
            let e = self.type_elem(t, &r)?;
            self.skip_newlines();
            let at = self.i;
            let v = match self.stmt(Family::Inet)? {
                Stmt::Verdict(v) => v,
                _ => return Err(self.err_at(at, "expected a verdict in verdict map")),
            };
            map.push((e, v));
            self.skip_newlines();
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBrace => {}
                _ => return Err(self.err("expected ',' or '}' in verdict map")),
            }
        }
        if map.is_empty() {
            return Err(self.err("empty verdict map"));
        }
        Ok(Stmt::Vmap { field, map })
    }

    fn literal(&mut self, t: DataType) -> R<u128> {
        let at = self.i;
        let s = match *self.peek() {
            Tok::Word(w) => w,
            Tok::Str(s) => s,
            _ => return Err(self.err(format!("expected a {}", crate::types::type_desc(t)))),
        };
        self.bump();
        parse_literal(t, s).map_err(|m| self.err_at(at, m))
    }

    /// `{ e, e, … }` kept as text until the type is known.
    fn raw_elems(&mut self) -> R<Vec<RawElem<'a>>> {
        self.expect(Tok::LBrace, "'{'")?;
        let mut v = Vec::new();
        loop {
            self.skip_newlines();
            if *self.peek() == Tok::RBrace {
                self.bump();
                return Ok(v);
            }
            v.push(self.raw_elem()?);
            self.skip_newlines();
            match self.peek() {
                Tok::Comma => {
                    self.bump();
                }
                Tok::RBrace => {}
                _ => return Err(self.err("expected ',' or '}' in set")),
            }
        }
    }

    /// `add element` values: typed later, by the set they go into.
    fn untyped_elems(&mut self) -> R<Vec<RawElement>> {
        let raw = self.raw_elems()?;
        Ok(raw
            .iter()
            .map(|r| RawElement {
                text: r.text.to_owned(),
                hi: r.hi.map(|h| h.to_owned()),
                quoted: r.quoted,
                pos: self.t[r.at].pos,
            })
            .collect())
    }

    fn raw_elem(&mut self) -> R<RawElem<'a>> {
        let at = self.i;
        let (text, quoted) = match *self.peek() {
            Tok::Word(w) => (w, false),
            Tok::Str(s) => (s, true),
            _ => return Err(self.err("expected a value")),
        };
        self.bump();
        // `a - b` with blanks around the dash.
        if !quoted && matches!(self.peek(), Tok::Word("-")) {
            if let Tok::Word(hi) = *self.peek_at(1) {
                self.bump();
                self.bump();
                return Ok(RawElem {
                    at,
                    text,
                    hi: Some(hi),
                    quoted,
                });
            }
        }
        Ok(RawElem {
            at,
            text,
            hi: None,
            quoted,
        })
    }

    fn type_elem(&self, t: DataType, r: &RawElem<'_>) -> R<Elem> {
        typed_elem(t, r.text, r.hi, r.quoted).map_err(|m| self.err_at(r.at, m))
    }
}

/// Types one element written as `text` (or `text - hi`).
pub(crate) fn typed_elem(
    t: DataType,
    text: &str,
    hi: Option<&str>,
    quoted: bool,
) -> Result<Elem, String> {
    if quoted {
        return parse_literal(t, text).map(Elem::Value);
    }
    if let Some(hi) = hi {
        let a = parse_literal(t, text)?;
        let b = parse_literal(t, hi)?;
        return range(a, b);
    }
    if let Ok(v) = parse_literal(t, text) {
        return Ok(Elem::Value(v));
    }
    if let Some((a, l)) = text.rsplit_once('/') {
        if !t.allows_prefix() {
            return Err(format!(
                "prefixes are not allowed for a {}",
                crate::types::type_desc(t)
            ));
        }
        let a = parse_literal(t, a)?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|&l| (l as u32) <= t.bits())
            .ok_or_else(|| format!("bad prefix length '{l}'"))?;
        return Ok(Elem::Prefix(a, len));
    }
    // `a-b` without blanks: try each dash as the separator (symbol names
    // such as `echo-request` contain dashes themselves).
    for (i, _) in text.match_indices('-') {
        let (a, b) = (&text[..i], &text[i + 1..]);
        if let (Ok(a), Ok(b)) = (parse_literal(t, a), parse_literal(t, b)) {
            return range(a, b);
        }
    }
    parse_literal(t, text).map(Elem::Value)
}

fn range(a: u128, b: u128) -> Result<Elem, String> {
    if a > b {
        return Err("range start is above its end".into());
    }
    Ok(Elem::Range(a, b))
}

#[derive(Clone, Copy)]
struct RawElem<'a> {
    at: usize,
    text: &'a str,
    hi: Option<&'a str>,
    quoted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Vec<Command> {
        match parse(src) {
            Ok(c) => c,
            Err(e) => panic!("{src:?}: {e}"),
        }
    }

    fn err(src: &str) -> ParseError {
        match parse(src) {
            Ok(c) => panic!("{src:?} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    fn one_rule(rule: &str) -> Rule {
        let src = format!("table inet t {{\n chain c {{\n  {rule}\n }}\n}}\n");
        match ok(&src).remove(0) {
            Command::Table(mut t) => t.chains.remove(0).rules.remove(0),
            c => panic!("{c:?}"),
        }
    }

    fn m(rule: &str) -> Match {
        match one_rule(rule).stmts.remove(0) {
            Stmt::Match(m) => m,
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn table_chain_policy_priority() {
        let c = ok("flush ruleset\ntable inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter + 10; policy drop;\n\t; }\n\tchain out { type filter hook output priority -5; }\n}\n");
        assert_eq!(c[0], Command::FlushRuleset);
        let Command::Table(t) = &c[1] else { panic!() };
        assert_eq!((t.family, t.name.as_str()), (Family::Inet, "filter"));
        let b = t.chains[0].base.unwrap();
        assert_eq!(
            (b.hook, b.priority, b.policy),
            (Hook::Input, 10, Policy::Drop)
        );
        let b = t.chains[1].base.unwrap();
        assert_eq!(
            (b.hook, b.priority, b.policy),
            (Hook::Output, -5, Policy::Accept)
        );
    }

    #[test]
    fn bridge_priority_names() {
        let c = ok("table bridge sw { chain fwd { type filter hook forward priority filter; policy accept; }; }");
        let Command::Table(t) = &c[0] else { panic!() };
        assert_eq!(t.chains[0].base.unwrap().priority, -200);
    }

    #[test]
    fn matches() {
        assert_eq!(
            m("ip saddr 10.0.0.0/8 accept").rhs,
            Rhs::Elem(Elem::Prefix(0x0a00_0000, 8))
        );
        assert_eq!(
            m("ip daddr 10.0.0.1-10.0.0.9 accept").rhs,
            Rhs::Elem(Elem::Range(0x0a00_0001, 0x0a00_0009))
        );
        assert_eq!(
            m("tcp dport 1024 - 65535 drop").rhs,
            Rhs::Elem(Elem::Range(1024, 65535))
        );
        assert_eq!(m("tcp dport != 22 drop").op, CmpOp::Ne);
        assert_eq!(
            m("udp dport { 53, 123, 5000-5100 } accept").rhs,
            Rhs::Set(alloc::vec![
                Elem::Value(53),
                Elem::Value(123),
                Elem::Range(5000, 5100)
            ])
        );
        assert_eq!(m("meta l4proto tcp accept").rhs, Rhs::Elem(Elem::Value(6)));
        assert_eq!(
            m("meta nfproto ipv6 accept").rhs,
            Rhs::Elem(Elem::Value(10))
        );
        assert_eq!(
            m("icmp type echo-request accept").rhs,
            Rhs::Elem(Elem::Value(8))
        );
        assert_eq!(
            m("icmp type { echo-request, echo-reply } accept").rhs,
            Rhs::Set(alloc::vec![Elem::Value(8), Elem::Value(0)])
        );
        assert_eq!(
            m("ct state established,related accept").rhs,
            Rhs::Elem(Elem::Value(6))
        );
        let x = m("tcp flags & (syn|ack) == syn accept");
        assert_eq!(
            (x.mask, x.op, x.rhs),
            (Some(0x12), CmpOp::Eq, Rhs::Elem(Elem::Value(2)))
        );
        assert_eq!(m("tcp flags syn accept").op, CmpOp::Implicit);
        assert_eq!(
            m("ip6 saddr fe80::/64 accept").rhs,
            Rhs::Elem(Elem::Prefix(0xfe80u128 << 112, 64))
        );
        assert_eq!(
            m("ether saddr 02:00:00:00:00:01 accept").rhs,
            Rhs::Elem(Elem::Value(0x0200_0000_0001))
        );
        assert_eq!(
            m("ether type ip6 accept").rhs,
            Rhs::Elem(Elem::Value(0x86dd))
        );
        assert_eq!(m("meta iifname \"eth0\" accept").field, Field::MetaIifname);
        assert_eq!(m("iifname \"eth0\" accept").field, Field::MetaIifname);
        assert_eq!(m("meta mark 0x10 accept").rhs, Rhs::Elem(Elem::Value(16)));
        assert_eq!(
            m("ip saddr @allowed accept").rhs,
            Rhs::Named("allowed".into())
        );
        assert_eq!(m("tcp dport < 1024 accept").op, CmpOp::Lt);
        assert_eq!(
            m("ct direction reply accept").rhs,
            Rhs::Elem(Elem::Value(1))
        );
        assert_eq!(m("ip ttl 64 accept").rhs, Rhs::Elem(Elem::Value(64)));
        assert_eq!(
            m("udp length 100-200 accept").rhs,
            Rhs::Elem(Elem::Range(100, 200))
        );
    }

    #[test]
    fn statements() {
        let r = one_rule("tcp dport 22 counter packets 5 bytes 300 log prefix \"ssh \" limit rate 10/second burst 20 packets accept");
        assert_eq!(
            r.stmts[1],
            Stmt::Counter {
                packets: 5,
                bytes: 300
            }
        );
        assert_eq!(
            r.stmts[2],
            Stmt::Log {
                prefix: Some("ssh ".into())
            }
        );
        assert_eq!(
            r.stmts[3],
            Stmt::Limit {
                rate: 10,
                per: RateUnit::Second,
                burst: 20,
                over: false
            }
        );
        assert_eq!(
            one_rule("reject").stmts[0],
            Stmt::Verdict(Verdict::Reject(RejectWith::Default))
        );
        assert_eq!(
            one_rule("reject with tcp reset").stmts[0],
            Stmt::Verdict(Verdict::Reject(RejectWith::TcpReset))
        );
        assert_eq!(
            one_rule("reject with icmp type host-unreachable").stmts[0],
            Stmt::Verdict(Verdict::Reject(RejectWith::Icmp(1)))
        );
        assert_eq!(
            one_rule("reject with icmpx type admin-prohibited").stmts[0],
            Stmt::Verdict(Verdict::Reject(RejectWith::Icmpx(3)))
        );
        assert_eq!(
            one_rule("jump other").stmts[0],
            Stmt::Verdict(Verdict::Jump("other".into()))
        );
        assert_eq!(
            one_rule("goto other").stmts[0],
            Stmt::Verdict(Verdict::Goto("other".into()))
        );
        let Stmt::Vmap { field, map } =
            one_rule("tcp dport vmap { 22 : accept, 80 : drop, 1000-2000 : jump x }")
                .stmts
                .remove(0)
        else {
            panic!()
        };
        assert_eq!(field, Field::TcpDport);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2], (Elem::Range(1000, 2000), Verdict::Jump("x".into())));
    }

    #[test]
    fn named_sets_and_commands() {
        let c = ok("table ip t {\n set s {\n  type ipv4_addr\n  flags interval\n  elements = { 10.0.0.0/8,\n 192.168.1.1 }\n }\n}\nadd rule ip t c ip saddr @s drop\nadd element ip t s { 1.2.3.4 }\n");
        let Command::Table(t) = &c[0] else { panic!() };
        assert_eq!(
            t.sets[0].elements,
            alloc::vec![Elem::Prefix(0x0a00_0000, 8), Elem::Value(0xc0a8_0101)]
        );
        assert!(matches!(&c[1], Command::AddRule { chain, .. } if chain == "c"));
        assert!(
            matches!(&c[2], Command::AddElement { set, elements, .. } if set == "s" && elements.len() == 1)
        );
    }

    #[test]
    fn comments_and_semicolons() {
        let c = ok("# a comment\ntable inet t { chain c { type filter hook input priority 0; policy accept; tcp dport 22 accept; udp dport 53 accept # trailing\n }; }");
        let Command::Table(t) = &c[0] else { panic!() };
        assert_eq!(t.chains[0].rules.len(), 2);
        assert_eq!(t.chains[0].rules[1].pos, Pos { line: 2, col: 97 });
    }

    #[test]
    fn errors_carry_line_col_token() {
        let e = err("table inet t {\n chain c {\n  tcp dport 70000 accept\n }\n}\n");
        assert_eq!(
            (e.pos, e.token.as_str()),
            (Pos { line: 3, col: 13 }, "70000")
        );
        let e = err("table inet t {\n chain c {\n  tcp bogus 1 accept\n }\n}\n");
        assert_eq!(
            (e.pos, e.token.as_str()),
            (Pos { line: 3, col: 7 }, "bogus")
        );
        let e = err("table foo t { }");
        assert_eq!((e.pos, e.token.as_str()), (Pos { line: 1, col: 7 }, "foo"));
        let e = err("table inet t {\n\tchain c {\n\t\ttype nat hook input priority 0;\n\t; }\n}");
        assert_eq!(e.pos, Pos { line: 3, col: 8 });
        let e = err("table inet t { chain c { type filter hook prerouting priority 0; }; }");
        assert_eq!(e.token, "prerouting");
        let e = err("table inet t { chain c { accept drop; }; }");
        assert_eq!(
            (e.token.as_str(), e.message.as_str()),
            ("drop", "statement after a verdict")
        );
        let e = err("table inet t { chain c { ip saddr 10.0.0.0/33 accept; }; }");
        assert_eq!(e.token, "10.0.0.0/33");
        let e = err("table inet t { chain c { ip saddr 10.0.0.300 accept; }; }");
        assert_eq!(e.token, "10.0.0.300");
        let e = err("table inet t { chain c { tcp dport 20-10 accept; }; }");
        assert!(e.message.contains("range"), "{e}");
        let e = err("table inet t { chain c { ct state bogus accept; }; }");
        assert_eq!(e.token, "bogus");
        let e = err("table inet t { set s { flags interval; }; }");
        assert!(e.message.contains("type"), "{e}");
        let e = err("table inet t { set s { type ipv4_addr; elements = { 10.0.0.0/8 }; }; }");
        assert!(e.message.contains("interval"), "{e}");
        let e = err("table inet t { chain c { log prefix \"oops; }; }");
        assert_eq!(e.message, "unterminated string");
        let e = err("table inet t { chain c { policy drop; }; }");
        assert!(e.message.contains("base chain"), "{e}");
        let e = err("table inet t { chain c { tcp dport vmap { 22 accept }; }; }");
        assert!(e.message.contains("':'"), "{e}");
        let e = err("add rule inet t");
        assert_eq!(e.pos, Pos { line: 1, col: 16 });
        let e = err("table inet t { chain c { limit rate 10/fortnight accept; }; }");
        assert_eq!(e.token, "10/fortnight");
        let e = err("table inet t { chain c { reject with icmp type nowhere; }; }");
        assert_eq!(e.token, "nowhere");
        let e = err("table inet t { chain c { meta iifname \"eth*\" accept; }; }");
        assert!(e.message.contains("wildcard"), "{e}");
        let e = err("table inet t { chain c { tcp dport 22 accept; }; } }");
        assert_eq!(e.token, "}");
        let e = err("table inet t { chain c { tcp dport & 3 22 accept; }; }");
        assert!(e.message.contains("mask"), "{e}");
        // nft wants a newline or ';' after every item of a block.
        let e = err("table inet t {\n chain c {\n  accept }\n}");
        assert_eq!((e.pos, e.token.as_str()), (Pos { line: 3, col: 10 }, "}"));
        assert!(e.message.contains("after a rule"), "{e}");
        let e = err("table inet t {\n chain c { type filter hook input priority 0 }\n}");
        assert!(e.message.contains("after the chain type"), "{e}");
        let e = err("table inet t { chain c { accept; } }");
        assert!(e.message.contains("after a chain"), "{e}");
        let e = err("table inet t {\n  chain c {\n    ip saddr ~ accept\n  }\n}");
        assert_eq!((e.pos, e.token.as_str()), (Pos { line: 3, col: 14 }, "~"));
    }

    #[test]
    fn display_round_trips() {
        let src = "table inet t {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.0.0.0/8, 10.1.0.1-10.1.0.9 }\n\t; }\n\tchain c {\n\t\ttype filter hook input priority filter - 5; policy drop;\n\t\tct state established,related accept\n\t\ttcp flags & (syn | ack) == syn counter packets 1 bytes 60 jump x\n\t\tip saddr @s tcp dport { 22, 80-90 } reject with tcp reset\n\t\tudp dport vmap { 53 : accept, 123 : drop }\n\t; }\n\tchain x {\n\t\tmeta iifname \"eth0\" return\n\t; }\n}\n";
        let cmds = ok(src);
        let Command::Table(t) = &cmds[0] else {
            panic!()
        };
        let printed = format!("{t}");
        let again = ok(&printed);
        let Command::Table(t2) = &again[0] else {
            panic!()
        };
        assert_eq!(format!("{t2}"), printed);
        assert_eq!(t.chains[0].rules.len(), t2.chains[0].rules.len());
        for (a, b) in t.chains.iter().zip(&t2.chains) {
            for (x, y) in a.rules.iter().zip(&b.rules) {
                assert_eq!(x.stmts, y.stmts);
            }
        }
    }
}

//! Property tests: the parser never panics, whatever the input, and a
//! printed ruleset parses back to the same tree (and prints the same).
//! The fuzz target (`fuzz/`) runs the same checks on its corpus; the corpus
//! files are replayed here too, so they run on stable Rust.

use nft_filter::ast::*;
use nft_filter::types::{Family, Field, Hook};
use nft_filter::{compile_text, parse, Command};
use proptest::prelude::*;

const FRAGMENTS: &[&str] = &[
    "table",
    "inet",
    "ip",
    "ip6",
    "bridge",
    "t",
    "{",
    "}",
    ";",
    "\n",
    "chain",
    "c",
    "type",
    "filter",
    "hook",
    "input",
    "priority",
    "0",
    "-1",
    "policy",
    "accept",
    "drop",
    "ip saddr",
    "10.0.0.0/8",
    "10.0.0.1-10.0.0.9",
    "tcp dport",
    "22",
    "1-1023",
    "!=",
    "==",
    "<",
    "&",
    "(",
    "|",
    ")",
    "syn",
    "ack",
    "ct state",
    "established,related",
    "counter",
    "packets",
    "bytes",
    "5",
    "jump",
    "goto",
    "return",
    "reject",
    "with",
    "tcp reset",
    "@s",
    "set",
    "s",
    "elements",
    "=",
    "flags interval",
    "vmap",
    ":",
    ",",
    "\"eth0\"",
    "log prefix",
    "limit rate",
    "10/second",
    "burst",
    "add",
    "rule",
    "element",
    "flush ruleset",
    "#",
    "fe80::/10",
    "ip6 saddr",
    "ether saddr",
    "02:00:00:00:00:01",
    "meta",
    "l4proto",
    "udp",
    "icmp type",
    "echo-request",
];

fn fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..60).prop_map(|v| v.join(" "))
}

fn elem(t: DataType_) -> BoxedStrategy<Elem> {
    match t {
        DataType_::Addr => prop_oneof![
            any::<u32>().prop_map(|a| Elem::Value(a as u128)),
            (any::<u32>(), 1u8..=32)
                .prop_map(|(a, l)| Elem::Prefix((a & (u32::MAX << (32 - l))) as u128, l)),
            (any::<u32>(), any::<u16>())
                .prop_map(|(a, d)| Elem::Range(a as u128, a.saturating_add(d as u32) as u128)),
        ]
        .boxed(),
        DataType_::Port => prop_oneof![
            any::<u16>().prop_map(|p| Elem::Value(p as u128)),
            (any::<u16>(), any::<u8>())
                .prop_map(|(p, d)| Elem::Range(p as u128, p.saturating_add(d as u16) as u128)),
        ]
        .boxed(),
    }
}

#[derive(Clone, Copy, Debug)]
enum DataType_ {
    Addr,
    Port,
}

fn stmt() -> impl Strategy<Value = Stmt> {
    let m = prop_oneof![
        (
            prop::sample::select(vec![Field::IpSaddr, Field::IpDaddr]),
            elem(DataType_::Addr),
            any::<bool>()
        )
            .prop_map(|(f, e, ne)| Stmt::Match(Match {
                field: f,
                mask: None,
                op: if ne { CmpOp::Ne } else { CmpOp::Implicit },
                rhs: Rhs::Elem(e)
            })),
        (
            prop::sample::select(vec![Field::TcpDport, Field::UdpSport]),
            prop::collection::vec(elem(DataType_::Port), 1..4)
        )
            .prop_map(|(f, es)| {
                let mut es = es;
                es.dedup();
                Stmt::Match(Match {
                    field: f,
                    mask: None,
                    op: CmpOp::Implicit,
                    rhs: Rhs::Set(es),
                })
            }),
        (1u128..=255).prop_map(|v| Stmt::Match(Match {
            field: Field::CtState,
            mask: None,
            op: CmpOp::Implicit,
            rhs: Rhs::Elem(Elem::Value(v & 0x0f | 2))
        })),
        (any::<u8>(), any::<u8>()).prop_map(|(m, v)| Stmt::Match(Match {
            field: Field::TcpFlags,
            mask: Some(m as u128 | 1),
            op: CmpOp::Eq,
            rhs: Rhs::Elem(Elem::Value(v as u128 & (m as u128 | 1)))
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(packets, bytes)| Stmt::Counter { packets, bytes }),
        "[a-z ]{0,10}".prop_map(|p| Stmt::Log { prefix: Some(p) }),
    ];
    m
}

fn verdict() -> impl Strategy<Value = Option<Verdict>> {
    prop_oneof![
        Just(None),
        Just(Some(Verdict::Accept)),
        Just(Some(Verdict::Drop)),
        Just(Some(Verdict::Return)),
        Just(Some(Verdict::Reject(RejectWith::TcpReset))),
        Just(Some(Verdict::Reject(RejectWith::Icmp(1)))),
        Just(Some(Verdict::Jump("sub".into()))),
    ]
}

fn table() -> impl Strategy<Value = Table> {
    let rule = (prop::collection::vec(stmt(), 0..4), verdict()).prop_filter_map(
        "empty rule",
        |(mut s, v)| {
            if let Some(v) = v {
                s.push(Stmt::Verdict(v));
            }
            (!s.is_empty()).then_some(Rule {
                stmts: s,
                pos: Pos::default(),
                handle: 0,
            })
        },
    );
    (
        prop::collection::vec(rule, 0..6),
        -300i32..300,
        any::<bool>(),
        prop::collection::vec(elem(DataType_::Addr), 0..4),
    )
        .prop_map(|(rules, prio, drop, set_elems)| {
            let (base, sub): Halves = rules.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
            let base: Vec<Rule> = base.into_iter().map(|x| x.1).collect();
            let sub = sub.into_iter().map(|x| x.1);
            let sub_rules: Vec<Rule> = sub
                .into_iter()
                .filter(|r| {
                    !r.stmts
                        .iter()
                        .any(|s| matches!(s, Stmt::Verdict(Verdict::Jump(_))))
                })
                .collect();
            Table {
                family: Family::Inet,
                name: "t".into(),
                sets: vec![SetDecl {
                    name: "s".into(),
                    key: nft_filter::types::DataType::Ipv4Addr,
                    interval: true,
                    elements: set_elems,
                    pos: Pos::default(),
                }],
                chains: vec![
                    Chain {
                        name: "c".into(),
                        base: Some(BaseChain {
                            hook: Hook::Input,
                            priority: prio,
                            priority_name: None,
                            policy: if drop { Policy::Drop } else { Policy::Accept },
                        }),
                        rules: base,
                        pos: Pos::default(),
                    },
                    Chain {
                        name: "sub".into(),
                        base: None,
                        rules: sub_rules,
                        pos: Pos::default(),
                    },
                ],
                pos: Pos::default(),
            }
        })
}

type Halves = (Vec<(usize, Rule)>, Vec<(usize, Rule)>);

fn strip(mut t: Table) -> Table {
    t.pos = Pos::default();
    for s in &mut t.sets {
        s.pos = Pos::default();
    }
    for c in &mut t.chains {
        c.pos = Pos::default();
        for r in &mut c.rules {
            r.pos = Pos::default();
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_bytes(s in "\\PC{0,200}") {
        let _ = parse(&s);
        let _ = compile_text(&s);
    }

    #[test]
    fn parser_never_panics_on_fragments(s in fragments()) {
        let _ = parse(&s);
        let _ = compile_text(&s);
    }

    #[test]
    fn print_parse_round_trip(t in table()) {
        let printed = format!("{t}");
        let cmds = parse(&printed).map_err(|e| TestCaseError::fail(format!("{e}\n{printed}")))?;
        prop_assert_eq!(cmds.len(), 1);
        let Command::Table(back) = cmds.into_iter().next().unwrap() else { panic!() };
        prop_assert_eq!(format!("{back}"), printed.clone());
        prop_assert_eq!(strip(back), strip(t));
    }
}

#[test]
fn fuzz_corpus_replays() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz corpus").flatten() {
        let data = std::fs::read(e.path()).unwrap();
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = parse(s);
            let _ = compile_text(s);
        }
        n += 1;
    }
    assert!(n > 0);
}

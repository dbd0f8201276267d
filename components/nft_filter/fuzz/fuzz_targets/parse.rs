//! Fuzz target: any text through the parser and the compiler; whatever
//! parses must print and parse back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nft_filter::{compile_text, list_tables, parse, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = compile_text(s);
    if let Ok(cmds) = parse(s) {
        let tables: Vec<_> = cmds.into_iter().filter_map(|c| if let Command::Table(t) = c { Some(t) } else { None }).collect();
        let printed = list_tables(&tables);
        let again = parse(&printed).expect("printed ruleset must parse");
        let tables2: Vec<_> = again.into_iter().filter_map(|c| if let Command::Table(t) = c { Some(t) } else { None }).collect();
        assert_eq!(list_tables(&tables2), printed);
    }
});

//! Rulesets named by run scripts: reading them, and mapping a component's
//! `line:col` error in the combined text back to the file it came from.

use crate::script::NftSource;
use std::fmt;
use std::path::Path;

/// The text sent with `nft load`, and where each source starts in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub text: String,
    /// (first line in `text`, 1-based; name of the source).
    pub parts: Vec<(usize, String)>,
}

/// Reads and joins the sources (files in order; each ends with a newline).
pub fn read(sources: &[NftSource]) -> Result<Ruleset, String> {
    let mut rs = Ruleset::default();
    let mut line = 1;
    for s in sources {
        let (name, mut text) = match s {
            NftSource::File(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read rule file {}: {e}", p.display()))?,
            ),
            NftSource::Inline(t) => ("<inline nftables>".to_string(), t.clone()),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        rs.parts.push((line, name));
        line += text.matches('\n').count();
        rs.text.push_str(&text);
    }
    Ok(rs)
}

/// Splits a leading `LINE:COL:` (or `line L, column C:`) off an error message.
pub fn split_position(msg: &str) -> Option<(usize, usize, &str)> {
    let msg = msg.trim_start();
    if let Some(rest) = msg.strip_prefix("line ") {
        let (l, rest) = rest.split_once(", column ")?;
        let (c, rest) = rest.split_once(':')?;
        return Some((
            l.trim().parse().ok()?,
            c.trim().parse().ok()?,
            rest.trim_start(),
        ));
    }
    let (l, rest) = msg.split_once(':')?;
    let (c, rest) = rest.split_once(':')?;
    Some((
        l.trim().parse().ok()?,
        c.trim().parse().ok()?,
        rest.trim_start(),
    ))
}

impl Ruleset {
    /// `file:line:col: message` for an error the component reported about
    /// this ruleset (the message unchanged if it names no position).
    pub fn locate(&self, msg: &str) -> String {
        let msg = msg.trim();
        let Some((line, col, rest)) = split_position(msg) else {
            return match self.parts.as_slice() {
                [(_, name)] => format!("{name}: {msg}"),
                _ => msg.to_string(),
            };
        };
        match self.parts.iter().rev().find(|(start, _)| *start <= line) {
            Some((start, name)) => format!("{name}:{}:{col}: {rest}", line - start + 1),
            None => msg.to_string(),
        }
    }
}

/// Names for messages: the file, or "inline".
pub fn describe(sources: &[NftSource]) -> String {
    sources
        .iter()
        .map(|s| match s {
            NftSource::File(p) => p.display().to_string(),
            NftSource::Inline(_) => "<inline nftables>".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A component's error about a ruleset file, shown as
/// `file:line:col: message` (or `file: message` when it names no place).
pub struct NftFileError {
    text: String,
}

impl NftFileError {
    pub fn new(file: &Path, body: &str) -> NftFileError {
        let rs = Ruleset {
            text: String::new(),
            parts: vec![(1, file.display().to_string())],
        };
        let mut lines = body.trim().lines();
        let mut text = rs.locate(lines.next().unwrap_or("rejected"));
        for l in lines {
            text.push('\n');
            text.push_str(l);
        }
        NftFileError { text }
    }
}

impl fmt::Display for NftFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_back_to_their_file() {
        let rs = Ruleset {
            text: String::new(),
            parts: vec![(1, "a.nft".into()), (4, "b.nft".into())],
        };
        assert_eq!(rs.locate("2:5: unknown word"), "a.nft:2:5: unknown word");
        assert_eq!(rs.locate("5:1: bad"), "b.nft:2:1: bad");
        assert_eq!(rs.locate("line 4, column 2: x"), "b.nft:1:2: x");
        assert_eq!(rs.locate("no position"), "no position");
        assert_eq!(split_position("12:3: m"), Some((12, 3, "m")));
        assert_eq!(split_position("table: x"), None);
        let e = NftFileError::new(Path::new("kv.nft"), "3:7: unexpected token\n  detail");
        assert_eq!(e.to_string(), "kv.nft:3:7: unexpected token\n  detail");
    }

    #[test]
    fn sources_join_with_line_offsets() {
        let rs = read(&[
            NftSource::Inline("a\nb".into()),
            NftSource::Inline("c\n".into()),
        ])
        .unwrap();
        assert_eq!(rs.text, "a\nb\nc\n");
        assert_eq!(rs.parts[1].0, 3);
    }
}

//! A small XML element tree for `<config>` elements and run scripts.
//!
//! [`ConfigNode::parse`] reads one root element (with quick-xml) into a tree
//! of elements, each with its attributes, children, text and the byte span
//! it occupies in the source (so `init` can hand a component its `<config>`
//! verbatim, and errors can name a line and column). Attribute lookups that
//! fail name the element, the attribute and where it is:
//!
//! ```
//! use fragnet_host::ConfigNode;
//! let cfg = ConfigNode::parse(r#"<config backend="tap" queues="2">
//!   <nftables file="etc/kv0.nft"/>
//! </config>"#).unwrap();
//! assert_eq!(cfg.attr("backend"), Some("tap"));
//! assert_eq!(cfg.attr_parse::<u32>("queues").unwrap(), Some(2));
//! assert_eq!(cfg.child("nftables").unwrap().attr("file"), Some("etc/kv0.nft"));
//! assert!(cfg.attr_parse::<u32>("backend").unwrap_err().to_string().contains("line 1"));
//! ```

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// One element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigNode {
    /// Tag name.
    pub name: String,
    /// Attributes in source order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// Child elements in source order.
    pub children: Vec<ConfigNode>,
    /// Text content directly inside this element, unescaped (whitespace kept).
    pub text: String,
    /// Byte range of the whole element (`<tag …>` … `</tag>`) in the source.
    pub span: Range<usize>,
    /// 1-based line of the element's `<`.
    pub line: usize,
    /// 1-based column (in characters) of the element's `<`.
    pub col: usize,
}

/// An XML or attribute error, with its place in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.col, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// 1-based (line, column) of byte `offset` in `src`; columns count
/// characters. Offsets past the end give the position just after the end.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn err_at(src: &str, offset: usize, message: String) -> ConfigError {
    let (line, col) = line_col(src, offset);
    ConfigError { line, col, message }
}

fn open_node(src: &str, start: &BytesStart<'_>, at: usize) -> Result<ConfigNode, ConfigError> {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| err_at(src, at, format!("bad attribute in <{name}>: {e}")))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|e| err_at(src, at, format!("bad value of {key}= in <{name}>: {e}")))?
            .into_owned();
        attrs.push((key, value));
    }
    let (line, col) = line_col(src, at);
    Ok(ConfigNode {
        name,
        attrs,
        children: Vec::new(),
        text: String::new(),
        span: at..at,
        line,
        col,
    })
}

impl ConfigNode {
    /// Parses a document holding exactly one root element (an XML
    /// declaration and comments around it are allowed).
    pub fn parse(src: &str) -> Result<ConfigNode, ConfigError> {
        let mut reader = Reader::from_str(src);
        reader.config_mut().trim_text(false);
        let mut stack: Vec<ConfigNode> = Vec::new();
        let mut root: Option<ConfigNode> = None;
        loop {
            let at = reader.buffer_position() as usize;
            let event = reader.read_event().map_err(|e| {
                let pos = (reader.error_position() as usize).max(at);
                err_at(src, pos, format!("malformed XML: {e}"))
            })?;
            let end = reader.buffer_position() as usize;
            match event {
                Event::Start(s) | Event::Empty(s) if root.is_some() && stack.is_empty() => {
                    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
                    return Err(err_at(
                        src,
                        at,
                        format!("second root element <{name}> (only one is allowed)"),
                    ));
                }
                Event::Start(s) => stack.push(open_node(src, &s, at)?),
                Event::Empty(s) => {
                    let mut node = open_node(src, &s, at)?;
                    node.span = at..end;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                Event::End(_) => {
                    // quick-xml checks that end names match.
                    let mut node = stack.pop().ok_or_else(|| {
                        err_at(src, at, "closing tag without an opening tag".into())
                    })?;
                    node.span.end = end;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                Event::Text(t) => {
                    let text = t
                        .xml_content()
                        .map_err(|e| err_at(src, at, format!("bad text: {e}")))?;
                    match stack.last_mut() {
                        Some(n) => n.text.push_str(&text),
                        None if text.trim().is_empty() => {}
                        None => {
                            return Err(err_at(
                                src,
                                at + (text.len() - text.trim_start().len()),
                                "text outside of the root element".into(),
                            ))
                        }
                    }
                }
                Event::CData(t) => {
                    let text = String::from_utf8_lossy(&t).into_owned();
                    match stack.last_mut() {
                        Some(n) => n.text.push_str(&text),
                        None => {
                            return Err(err_at(src, at, "CDATA outside of the root element".into()))
                        }
                    }
                }
                Event::GeneralRef(r) => {
                    let ch = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => {
                            let name = String::from_utf8_lossy(&r).into_owned();
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .map(str::to_string)
                                .ok_or_else(|| {
                                    err_at(src, at, format!("unknown entity &{name};"))
                                })?
                        }
                        Err(e) => return Err(err_at(src, at, format!("bad reference: {e}"))),
                    };
                    match stack.last_mut() {
                        Some(n) => n.text.push_str(&ch),
                        None => {
                            return Err(err_at(src, at, "text outside of the root element".into()))
                        }
                    }
                }
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
                Event::Eof => {
                    if let Some(open) = stack.last() {
                        return Err(ConfigError {
                            line: open.line,
                            col: open.col,
                            message: format!("<{}> is never closed", open.name),
                        });
                    }
                    return root.ok_or_else(|| err_at(src, at, "no root element".into()));
                }
            }
        }
    }

    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of attribute `key`, or an error naming it and this element.
    pub fn require_attr(&self, key: &str) -> Result<&str, ConfigError> {
        self.attr(key)
            .ok_or_else(|| self.error(format!("<{}> needs a {key}=\"…\" attribute", self.name)))
    }

    /// Attribute `key` parsed with `FromStr`; `Ok(None)` when absent, an
    /// error naming the attribute, value and place when it does not parse.
    pub fn attr_parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.attr(key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| self.error(format!("<{} {key}=\"{v}\">: {e}", self.name))),
        }
    }

    /// Attribute `key` parsed, or `default` when absent.
    pub fn attr_or<T: FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        Ok(self.attr_parse(key)?.unwrap_or(default))
    }

    /// A yes/no attribute (`yes`/`no`, `true`/`false`, `1`/`0`, `on`/`off`).
    pub fn attr_bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.attr(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "yes" | "true" | "1" | "on" => Ok(true),
                "no" | "false" | "0" | "off" => Ok(false),
                _ => Err(self.error(format!("<{} {key}=\"{v}\">: expected yes or no", self.name))),
            },
        }
    }

    /// The first child element named `name`.
    pub fn child(&self, name: &str) -> Option<&ConfigNode> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All child elements named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ConfigNode> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// An error placed at this element.
    pub fn error(&self, message: String) -> ConfigError {
        ConfigError {
            line: self.line,
            col: self.col,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_attrs_spans() {
        let src = "<?xml version=\"1.0\"?>\n<config a=\"1\">\n  <start name=\"x &amp; y\">\n    <config q=\"2\"><nftables file=\"f\"/></config>\n  </start>\n</config>\n";
        let root = ConfigNode::parse(src).unwrap();
        assert_eq!(root.name, "config");
        assert_eq!((root.line, root.col), (2, 1));
        let start = root.child("start").unwrap();
        assert_eq!(start.attr("name"), Some("x & y"));
        assert_eq!((start.line, start.col), (3, 3));
        let cfg = start.child("config").unwrap();
        assert_eq!(
            &src[cfg.span.clone()],
            "<config q=\"2\"><nftables file=\"f\"/></config>"
        );
        assert_eq!(&src[cfg.children[0].span.clone()], "<nftables file=\"f\"/>");
        assert_eq!(cfg.attr_or("q", 0u32).unwrap(), 2);
        assert_eq!(cfg.attr_or("missing", 7u32).unwrap(), 7);
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = ConfigNode::parse("<config>\n  <start>\n  </stop>\n</config>").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = ConfigNode::parse("<config>\n  <start name=\"a\">\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3), "{e}");
        assert!(e.message.contains("never closed"));
        let e = ConfigNode::parse("<a/>\n<b/>").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1));
        let e = ConfigNode::parse("<a x=\"1\" x=\"2\"/>").unwrap_err();
        assert_eq!(e.line, 1);
        let e = ConfigNode::parse("").unwrap_err();
        assert!(e.message.contains("no root"));
        let e = ConfigNode::parse("<a>\n <b x=\"y/>\n</a>").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let n = ConfigNode::parse("<a\n  q=\"x\"/>").unwrap();
        let e = n.attr_parse::<u32>("q").unwrap_err();
        assert_eq!((e.line, e.col), (1, 1));
        assert!(e.to_string().contains("q=\"x\""), "{e}");
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}

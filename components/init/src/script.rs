//! Run scripts: parsing, validation and the plan of processes and channels.
//!
//! [`Script::load`] reads the XML (errors carry line and column) and checks
//! everything that can be checked without starting anything: names, binaries,
//! CPUs, routes, driver queues, TAP privileges, rule files. [`Plan::new`]
//! turns a valid script into *instances* (one per process; a `nic_drv` start
//! gives one instance per queue) and *links* (one channel per route).

use fragnet_host::config::ConfigNode;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Directory for control sockets when the script names none.
pub const DEFAULT_CONTROL_DIR: &str = "/run/fragnet";
/// Most queues a driver start may ask for.
pub const MAX_QUEUES: u32 = 64;
/// The binary whose starts are driver queues (one process per queue).
pub const DRIVER_BINARY: &str = "nic_drv";
/// Routes of an `attach="manual"` start: the descriptors of all its
/// channels (3 each) travel in one control message of at most
/// `fragnet_host::control::MAX_FDS`.
pub const MAX_ATTACH_ROUTES: usize = fragnet_host::control::MAX_FDS / 3;

/// One problem in a run script, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// All problems found (at least one).
#[derive(Debug, Clone)]
pub struct ScriptErrors(pub Vec<ScriptError>);

impl fmt::Display for ScriptErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptErrors {}

/// Where a ruleset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftSource {
    /// `<nftables file="…"/>`: resolved path.
    File(PathBuf),
    /// `<nftables>rules…</nftables>`.
    Inline(String),
}

/// A TAP backend to create before the driver starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    pub ifname: String,
    pub queues: u32,
    pub host_ip: Option<String>,
    pub mtu: Option<u32>,
}

/// `<route><service name><child name queue?/></service></route>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub child: String,
    pub queue: Option<u32>,
    pub line: usize,
    pub col: usize,
}

/// One `<start>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    pub binary: String,
    /// Found executable (None only when `check` was told not to look).
    pub binary_path: Option<PathBuf>,
    pub cpu: Option<usize>,
    /// The `<config>` element verbatim (`<config/>` if none).
    pub config_xml: String,
    pub provides: Vec<String>,
    pub routes: Vec<Route>,
    /// Number of processes: the driver's `queues`, otherwise 1.
    pub queues: u32,
    /// Whether this is a driver (instances are named `name#q`).
    pub is_driver: bool,
    pub tap: Option<TapSpec>,
    pub nftables: Vec<NftSource>,
    /// `user="…"`: run as this uid/gid (no capabilities, no_new_privs).
    pub user: Option<(u32, u32)>,
    /// `attach="manual"`: init spawns nothing; a process started by hand
    /// attaches to take its place (see README, "Attached processes").
    pub manual: bool,
    /// `allow_uids` of a manual start: who may attach (default: the
    /// script's `allow_uids`).
    pub attach_uids: Option<Vec<u32>>,
    pub line: usize,
    pub col: usize,
}

/// A parsed, validated run script.
#[derive(Debug, Clone)]
pub struct Script {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub control_path: PathBuf,
    pub allow_uids: Vec<u32>,
    pub starts: Vec<Start>,
}

/// What validation may look at besides the script itself.
#[derive(Debug, Clone)]
pub struct Checks {
    /// CPUs this process may use (`<affinity cpu>` must be one).
    pub cpus: Vec<usize>,
    /// Whether the process holds CAP_NET_ADMIN (TAP creation).
    pub net_admin: bool,
    /// Check that TAP devices do not exist yet (off when re-reading the
    /// script of a running instance, which created them).
    pub tap_absent: bool,
    /// Directories searched for binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
}

impl Checks {
    /// The checks for this process: its CPUs, capabilities and search path
    /// (the `fragnet` executable's directory, `$FRAGNET_BIN_DIR`, `$PATH`).
    pub fn for_this_process() -> Checks {
        let mut bin_dirs = Vec::new();
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            bin_dirs.push(dir);
        }
        if let Some(d) = std::env::var_os("FRAGNET_BIN_DIR") {
            bin_dirs.extend(std::env::split_paths(&d));
        }
        if let Some(p) = std::env::var_os("PATH") {
            bin_dirs.extend(std::env::split_paths(&p));
        }
        let mut seen = HashSet::new();
        bin_dirs.retain(|d| seen.insert(d.clone()));
        Checks {
            cpus: fragnet_host::available_cpus().unwrap_or_default(),
            net_admin: has_net_admin(),
            tap_absent: true,
            bin_dirs,
        }
    }
}

/// Whether this process has CAP_NET_ADMIN in its effective set.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Finds an executable `name` in `dirs`.
pub fn find_binary(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The default control socket of a script: `/run/fragnet/<stem>.sock`.
pub fn default_control_path(script: &Path) -> PathBuf {
    let stem = script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fragnet".into());
    Path::new(DEFAULT_CONTROL_DIR).join(format!("{stem}.sock"))
}

struct Ctx<'a> {
    file: &'a Path,
    errors: Vec<ScriptError>,
}

impl Ctx<'_> {
    fn at(&mut self, node: &ConfigNode, message: String) {
        self.errors.push(ScriptError {
            file: self.file.to_path_buf(),
            line: node.line,
            col: node.col,
            message,
        });
    }
    fn cfg(&mut self, e: fragnet_host::ConfigError) {
        self.errors.push(ScriptError {
            file: self.file.to_path_buf(),
            line: e.line,
            col: e.col,
            message: e.message,
        });
    }
}

impl Script {
    /// Reads and validates the run script at `path`.
    pub fn load(path: &Path, checks: &Checks) -> Result<Script, ScriptErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ScriptErrors(vec![ScriptError {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read run script: {e}"),
            }])
        })?;
        Self::parse(path, &src, checks)
    }

    /// Validates run script text `src` (read from `path`).
    pub fn parse(path: &Path, src: &str, checks: &Checks) -> Result<Script, ScriptErrors> {
        let mut cx = Ctx {
            file: path,
            errors: Vec::new(),
        };
        let root = match ConfigNode::parse(src) {
            Ok(r) => r,
            Err(e) => {
                cx.cfg(e);
                return Err(ScriptErrors(cx.errors));
            }
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if root.name != "config" {
            cx.at(
                &root,
                format!("the root element is <{}>, expected <config>", root.name),
            );
        }
        for (k, _) in &root.attrs {
            if k != "control" && k != "allow_uids" {
                cx.at(
                    &root,
                    format!("unknown attribute {k}= on <config> (known: control, allow_uids)"),
                );
            }
        }
        let control_path = match root.attr("control") {
            Some(p) if !p.trim().is_empty() => dir.join(p.trim()),
            _ => default_control_path(path),
        };
        let allow_uids = parse_uids(&mut cx, &root, root.attr("allow_uids").unwrap_or("0"));

        let mut starts = Vec::new();
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        for node in &root.children {
            if node.name != "start" {
                cx.at(
                    node,
                    format!("unknown element <{}> (expected <start>)", node.name),
                );
                continue;
            }
            if let Some(s) = parse_start(&mut cx, node, src, &dir, checks) {
                if let Some((l, c)) = names.get(&s.name) {
                    cx.at(
                        node,
                        format!(
                            "duplicate start name \"{}\" (first at line {l}, column {c})",
                            s.name
                        ),
                    );
                    continue;
                }
                names.insert(s.name.clone(), (s.line, s.col));
                starts.push(s);
            }
        }
        if starts.is_empty() && cx.errors.is_empty() {
            cx.at(
                &root,
                "the run script starts nothing (no <start> elements)".into(),
            );
        }
        check_routes(&mut cx, &starts);
        check_taps(&mut cx, &starts, checks);
        if cx.errors.is_empty() {
            let script = Script {
                path: path.to_path_buf(),
                dir,
                control_path,
                allow_uids,
                starts,
            };
            check_tap_queues(&mut cx, &script);
            if cx.errors.is_empty() {
                return Ok(script);
            }
        }
        {
            cx.errors.sort_by_key(|e| (e.line, e.col));
            Err(ScriptErrors(cx.errors))
        }
    }

    pub fn start(&self, name: &str) -> Option<&Start> {
        self.starts.iter().find(|s| s.name == name)
    }
}

fn parse_start(
    cx: &mut Ctx<'_>,
    node: &ConfigNode,
    src: &str,
    dir: &Path,
    checks: &Checks,
) -> Option<Start> {
    let name = match node.attr("name") {
        Some(n) if valid_name(n) => n.to_string(),
        Some(n) => {
            cx.at(
                node,
                format!("start name \"{n}\" must be 1-64 characters of A-Z a-z 0-9 _ - ."),
            );
            return None;
        }
        None => {
            cx.at(node, "<start> needs a name=\"…\" attribute".into());
            return None;
        }
    };
    for (k, _) in &node.attrs {
        if !["name", "user", "attach", "allow_uids"].contains(&k.as_str()) {
            cx.at(
                node,
                format!(
                    "unknown attribute {k}= on <start name=\"{name}\"> (known: name, user, attach, allow_uids)"
                ),
            );
        }
    }
    let manual = match node.attr("attach") {
        None => false,
        Some("manual") => true,
        Some(v) => {
            cx.at(
                node,
                format!(
                    "start \"{name}\": attach=\"{v}\" is not known (the only value is \"manual\")"
                ),
            );
            false
        }
    };
    let attach_uids = node.attr("allow_uids").map(|list| {
        if !manual {
            cx.at(
                node,
                format!(
                    "start \"{name}\": allow_uids= names who may attach, so it needs attach=\"manual\""
                ),
            );
        }
        parse_uids(cx, node, list)
    });
    if manual {
        if node.attr("user").is_some() {
            cx.at(
                node,
                format!("start \"{name}\": user= has no meaning with attach=\"manual\" (init runs nothing; allow_uids= says who may attach)"),
            );
        }
        for child in &node.children {
            if child.name != "route" {
                cx.at(
                    child,
                    format!(
                        "start \"{name}\" is attach=\"manual\": init runs no process for it, so <{}> has no meaning (only <route> is allowed)",
                        child.name
                    ),
                );
            }
        }
    }
    let user = match node.attr("user") {
        None => None,
        Some(u) => match resolve_user(u) {
            Ok((uid, gid)) => {
                let euid = rustix::process::geteuid().as_raw();
                if euid != 0 && uid != euid {
                    cx.at(
                        node,
                        format!("start \"{name}\": running as user \"{u}\" needs root"),
                    );
                }
                Some((uid, gid))
            }
            Err(e) => {
                cx.at(node, format!("start \"{name}\": user=\"{u}\": {e}"));
                None
            }
        },
    };
    let mut binary = name.clone();
    let mut cpu = None;
    let mut config: Option<&ConfigNode> = None;
    let mut provides = Vec::new();
    let mut routes = Vec::new();
    for child in &node.children {
        match child.name.as_str() {
            "binary" => match child.attr("name") {
                Some(b) if valid_name(b) => binary = b.to_string(),
                _ => cx.at(child, "<binary> needs a name=\"…\" of a program file".into()),
            },
            "affinity" => match child.attr_parse::<usize>("cpu") {
                Ok(Some(c)) => {
                    if !checks.cpus.contains(&c) {
                        cx.at(
                            child,
                            format!(
                                "start \"{name}\": CPU {c} is not available on this machine (usable CPUs: {})",
                                list(&checks.cpus)
                            ),
                        );
                    }
                    cpu = Some(c);
                }
                Ok(None) => cx.at(child, "<affinity> needs a cpu=\"N\" attribute".into()),
                Err(e) => cx.cfg(e),
            },
            "config" => {
                if config.is_some() {
                    cx.at(child, format!("start \"{name}\" has two <config> elements"));
                }
                config = Some(child);
            }
            "provides" => {
                for s in &child.children {
                    match (s.name.as_str(), s.attr("name")) {
                        ("service", Some(n)) if valid_name(n) => provides.push(n.to_string()),
                        _ => cx.at(s, "<provides> holds <service name=\"…\"/> elements".into()),
                    }
                }
            }
            "route" => {
                for s in &child.children {
                    if let Some(r) = parse_route(cx, &name, s) {
                        routes.push(r);
                    }
                }
            }
            other => cx.at(
                child,
                format!(
                    "unknown element <{other}> in <start> (known: binary, affinity, config, provides, route)"
                ),
            ),
        }
    }
    let mut seen = HashSet::new();
    for r in &routes {
        if !seen.insert(r.service.to_ascii_lowercase()) {
            cx.errors.push(ScriptError {
                file: cx.file.to_path_buf(),
                line: r.line,
                col: r.col,
                message: format!("start \"{name}\" routes service \"{}\" twice", r.service),
            });
        }
    }
    if manual && routes.len() > MAX_ATTACH_ROUTES {
        cx.at(
            node,
            format!(
                "start \"{name}\": a manual start may route at most {MAX_ATTACH_ROUTES} services (their descriptors travel in one message)"
            ),
        );
    }
    let binary_path = if manual {
        None
    } else {
        find_binary(&binary, &checks.bin_dirs)
    };
    if binary_path.is_none() && !manual {
        cx.at(
            node,
            format!(
                "start \"{name}\": binary \"{binary}\" not found (searched: {})",
                checks
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    let config_xml = config
        .map(|c| src[c.span.clone()].to_string())
        .unwrap_or_else(|| "<config/>".into());
    let is_driver = binary == DRIVER_BINARY;
    let mut queues = 1;
    let mut tap = None;
    let mut nftables = Vec::new();
    if let Some(c) = config {
        if is_driver {
            match c.attr_parse::<u32>("queues") {
                Ok(Some(q)) if (1..=MAX_QUEUES).contains(&q) => queues = q,
                Ok(Some(q)) => cx.at(
                    c,
                    format!("start \"{name}\": queues=\"{q}\" must be 1 to {MAX_QUEUES}"),
                ),
                Ok(None) => {}
                Err(e) => cx.cfg(e),
            }
            if c.attr("backend") == Some("tap") {
                tap = parse_tap(cx, &name, c, queues);
            }
        }
        for n in c.children_named("nftables") {
            match n.attr("file") {
                Some(f) => {
                    let p = dir.join(f);
                    if let Err(e) = std::fs::read_to_string(&p) {
                        cx.at(
                            n,
                            format!(
                                "start \"{name}\": cannot read rule file {}: {e}",
                                p.display()
                            ),
                        );
                    }
                    nftables.push(NftSource::File(p));
                }
                None if !n.text.trim().is_empty() => {
                    nftables.push(NftSource::Inline(n.text.clone()))
                }
                None => cx.at(
                    n,
                    "<nftables> needs a file=\"…\" attribute or rules as its text".into(),
                ),
            }
        }
    }
    let (line, col) = (node.line, node.col);
    Some(Start {
        name,
        binary,
        binary_path,
        cpu,
        config_xml,
        provides,
        routes,
        queues,
        is_driver,
        tap,
        nftables,
        user,
        manual,
        attach_uids,
        line,
        col,
    })
}

/// A list of numeric uids (`0,1000` or space separated).
fn parse_uids(cx: &mut Ctx<'_>, node: &ConfigNode, list: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for uid in list
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
    {
        match uid.parse::<u32>() {
            Ok(u) => out.push(u),
            Err(_) => cx.at(
                node,
                format!("allow_uids: \"{uid}\" is not a numeric user id"),
            ),
        }
    }
    out
}

/// `UID`, `UID:GID`, or a user name from /etc/passwd (its primary group).
pub fn resolve_user(u: &str) -> Result<(u32, u32), String> {
    let u = u.trim();
    if let Some((a, b)) = u.split_once(':') {
        let uid = a
            .parse()
            .map_err(|_| format!("\"{a}\" is not a numeric uid"))?;
        let gid = b
            .parse()
            .map_err(|_| format!("\"{b}\" is not a numeric gid"))?;
        return Ok((uid, gid));
    }
    if let Ok(uid) = u.parse::<u32>() {
        return Ok((uid, uid));
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == u).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .ok_or_else(|| format!("no user named \"{u}\" in /etc/passwd (give UID or UID:GID)"))
}

fn parse_route(cx: &mut Ctx<'_>, start: &str, s: &ConfigNode) -> Option<Route> {
    if s.name != "service" {
        cx.at(s, "<route> holds <service name=\"…\"> elements".into());
        return None;
    }
    let Some(service) = s.attr("name").filter(|n| valid_name(n)) else {
        cx.at(s, "<service> in <route> needs a name=\"…\"".into());
        return None;
    };
    let children: Vec<&ConfigNode> = s.children.iter().collect();
    let child = match children[..] {
        [c] if c.name == "child" => c,
        _ => {
            cx.at(
                s,
                format!(
                    "start \"{start}\": route to service \"{service}\" needs exactly one <child name=\"…\"/>"
                ),
            );
            return None;
        }
    };
    let Some(target) = child.attr("name") else {
        cx.at(child, "<child> needs a name=\"…\" attribute".into());
        return None;
    };
    let queue = match child.attr_parse::<u32>("queue") {
        Ok(q) => q,
        Err(e) => {
            cx.cfg(e);
            return None;
        }
    };
    Some(Route {
        service: service.to_string(),
        child: target.to_string(),
        queue,
        line: child.line,
        col: child.col,
    })
}

fn parse_tap(cx: &mut Ctx<'_>, start: &str, c: &ConfigNode, queues: u32) -> Option<TapSpec> {
    let Some(ifname) = c.attr("ifname") else {
        cx.at(
            c,
            format!("start \"{start}\": backend=\"tap\" needs an ifname=\"…\""),
        );
        return None;
    };
    if let Err(e) = fragnet_host::tap::check_ifname(ifname) {
        cx.at(c, format!("start \"{start}\": {e}"));
        return None;
    }
    let host_ip = c.attr("host_ip").map(str::to_string);
    if let Some(ip) = &host_ip {
        let ok = ip.split_once('/').is_some_and(|(a, p)| {
            a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
        });
        if !ok {
            cx.at(
                c,
                format!("start \"{start}\": host_ip=\"{ip}\" is not an IPv4 address with prefix (like 10.77.0.1/24)"),
            );
        }
    }
    let mtu = match c.attr_parse::<u32>("mtu") {
        Ok(Some(m)) if !(68..=65521).contains(&m) => {
            cx.at(
                c,
                format!("start \"{start}\": mtu=\"{m}\" must be 68 to 65521"),
            );
            None
        }
        Ok(m) => m,
        Err(e) => {
            cx.cfg(e);
            None
        }
    };
    Some(TapSpec {
        ifname: ifname.to_string(),
        queues,
        host_ip,
        mtu,
    })
}

fn list(v: &[usize]) -> String {
    v.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_routes(cx: &mut Ctx<'_>, starts: &[Start]) {
    for s in starts {
        for r in &s.routes {
            let err = |message: String| ScriptError {
                file: cx.file.to_path_buf(),
                line: r.line,
                col: r.col,
                message,
            };
            let e = match starts.iter().find(|p| p.name == r.child) {
                None => Some(err(format!(
                    "start \"{}\" routes service \"{}\" to child \"{}\", which is not started by this script",
                    s.name, r.service, r.child
                ))),
                Some(p) if p.name == s.name => Some(err(format!(
                    "start \"{}\" routes service \"{}\" to itself",
                    s.name, r.service
                ))),
                Some(p) if !p.provides.iter().any(|x| x.eq_ignore_ascii_case(&r.service)) => {
                    let what = if starts
                        .iter()
                        .any(|q| q.provides.iter().any(|x| x.eq_ignore_ascii_case(&r.service)))
                    {
                        String::new()
                    } else {
                        " (no start provides it)".to_string()
                    };
                    Some(err(format!(
                        "start \"{}\" routes service \"{}\" to \"{}\", which does not provide it{what}",
                        s.name, r.service, p.name
                    )))
                }
                Some(p) => match r.queue {
                    Some(_) if !p.is_driver => Some(err(format!(
                        "start \"{}\": queue=\"…\" only applies to {DRIVER_BINARY} children; \"{}\" runs {}",
                        s.name, p.name, p.binary
                    ))),
                    Some(q) if q >= p.queues => Some(err(format!(
                        "start \"{}\": queue {q} of \"{}\" does not exist (it has {} queue{})",
                        s.name,
                        p.name,
                        p.queues,
                        if p.queues == 1 { "" } else { "s" }
                    ))),
                    _ => None,
                },
            };
            if let Some(e) = e {
                cx.errors.push(e);
            }
        }
    }
}

/// A TAP queue process serves exactly one client (a stack or a switch).
fn check_tap_queues(cx: &mut Ctx<'_>, script: &Script) {
    let plan = Plan::new(script);
    for (i, inst) in plan.instances.iter().enumerate() {
        let s = &script.starts[inst.start];
        if s.tap.is_none() {
            continue;
        }
        let clients = plan.links.iter().filter(|l| l.provider == i).count();
        if clients != 1 {
            cx.errors.push(ScriptError {
                file: cx.file.to_path_buf(),
                line: s.line,
                col: s.col,
                message: format!(
                    "{}: TAP queue {} has {clients} clients; backend tap serves exactly one client per queue (route one stack or switch to each queue)",
                    s.name,
                    inst.queue.unwrap_or(0)
                ),
            });
        }
    }
}

/// Whether (uid, gid) may open /dev/net/tun read-write (a driver running
/// as that user attaches its queue itself).
fn tun_accessible(uid: u32, gid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::metadata("/dev/net/tun").map_err(|e| format!("cannot see /dev/net/tun: {e}"))?;
    let mode = m.mode();
    let ok = uid == 0
        || (m.uid() == uid && mode & 0o600 == 0o600)
        || (m.gid() == gid && mode & 0o060 == 0o060)
        || mode & 0o006 == 0o006;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "may not open /dev/net/tun (mode {:04o}, owner {}:{})",
            mode & 0o7777,
            m.uid(),
            m.gid()
        ))
    }
}

fn check_taps(cx: &mut Ctx<'_>, starts: &[Start], checks: &Checks) {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for s in starts {
        let Some(t) = &s.tap else { continue };
        let err = |message: String| ScriptError {
            file: cx.file.to_path_buf(),
            line: s.line,
            col: s.col,
            message,
        };
        if let Some(other) = seen.insert(&t.ifname, &s.name) {
            cx.errors.push(err(format!(
                "starts \"{other}\" and \"{}\" both create TAP device {}",
                s.name, t.ifname
            )));
            continue;
        }
        if let Some((uid, gid)) = s.user {
            if let Err(e) = tun_accessible(uid, gid) {
                cx.errors.push(err(format!(
                    "start \"{}\" runs as uid {uid}, which {e}; drop user= or make the node accessible (mode 0666 is the usual setting)",
                    s.name
                )));
            }
        }
        if !checks.net_admin {
            cx.errors.push(err(format!(
                "start \"{}\": creating TAP device {} needs CAP_NET_ADMIN (run as root)",
                s.name, t.ifname
            )));
        } else if checks.tap_absent && fragnet_host::tap::exists(&t.ifname) {
            cx.errors.push(err(format!(
                "start \"{}\": a network device named {} already exists (delete it or pick another ifname)",
                s.name, t.ifname
            )));
        }
    }
}

// ---------------------------------------------------------------------------

/// One process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Index into `Script::starts`.
    pub start: usize,
    /// `FRAGNET_NAME`: the start name, `name#q` for driver queues.
    pub name: String,
    pub queue: Option<u32>,
}

/// One channel: provider (side A) ↔ client (side B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub service: String,
    pub provider: usize,
    pub client: usize,
    /// Label in the provider's `FRAGNET_CHANNELS`: `<service>:<client>`.
    pub provider_label: String,
    /// Label in the client's: `<service>`.
    pub client_label: String,
}

/// Instances and links of a valid script.
#[derive(Debug, Clone)]
pub struct Plan {
    pub instances: Vec<Instance>,
    pub links: Vec<Link>,
}

impl Plan {
    /// Expands starts into instances and routes into links. Routes to a
    /// driver without `queue` go to its least-loaded queue (after the
    /// explicit `queue=` routes are counted), in script order: round-robin
    /// when no queue is named.
    pub fn new(script: &Script) -> Plan {
        let mut instances = Vec::new();
        let mut first: Vec<usize> = Vec::new();
        for (i, s) in script.starts.iter().enumerate() {
            first.push(instances.len());
            if s.is_driver {
                for q in 0..s.queues {
                    instances.push(Instance {
                        start: i,
                        name: format!("{}#{q}", s.name),
                        queue: Some(q),
                    });
                }
            } else {
                instances.push(Instance {
                    start: i,
                    name: s.name.clone(),
                    queue: None,
                });
            }
        }
        // Queue load per driver start: explicit `queue=` first, then the
        // routes without one go to the least-loaded queue (lowest on ties),
        // in script order.
        let mut load: HashMap<usize, Vec<u32>> = HashMap::new();
        let provider_of = |r: &Route| script.starts.iter().position(|p| p.name == r.child);
        for client in &instances {
            for r in &script.starts[client.start].routes {
                if let (Some(pi), Some(q)) = (provider_of(r), r.queue) {
                    let n = script.starts[pi].queues as usize;
                    if let Some(c) = load
                        .entry(pi)
                        .or_insert_with(|| vec![0; n])
                        .get_mut(q as usize)
                    {
                        *c += 1;
                    }
                }
            }
        }
        let mut links = Vec::new();
        for (ci, client) in instances.iter().enumerate() {
            let s = &script.starts[client.start];
            for r in &s.routes {
                let Some(pi) = provider_of(r) else {
                    continue;
                };
                let p = &script.starts[pi];
                let q = match r.queue {
                    Some(q) => q,
                    None if p.queues > 1 => {
                        let counts = load.entry(pi).or_insert_with(|| vec![0; p.queues as usize]);
                        let q = (0..counts.len())
                            .min_by_key(|&q| (counts[q], q))
                            .unwrap_or(0);
                        counts[q] += 1;
                        q as u32
                    }
                    None => 0,
                };
                let service = r.service.to_ascii_lowercase();
                links.push(Link {
                    provider: first[pi] + q as usize,
                    client: ci,
                    provider_label: format!("{service}:{}", client.name),
                    client_label: service.clone(),
                    service,
                });
            }
        }
        Plan { instances, links }
    }
}

impl Plan {
    /// One line per process: name, binary, CPU, queue, channels
    /// (`label=side` as in `FRAGNET_CHANNELS`).
    pub fn describe(&self, script: &Script) -> String {
        let mut out = String::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let s = &script.starts[inst.start];
            let mut chans = Vec::new();
            for l in &self.links {
                if l.provider == i {
                    chans.push(format!("{}=A", l.provider_label));
                }
                if l.client == i {
                    chans.push(format!("{}=B", l.client_label));
                }
            }
            out.push_str(&format!(
                "{:<20} {:<16} cpu {:<3} {}channels: {}\n",
                inst.name,
                if s.manual { "(attach)" } else { &s.binary },
                s.cpu.map_or("-".into(), |c| c.to_string()),
                inst.queue.map_or(String::new(), |q| format!("queue {q} ")),
                if chans.is_empty() {
                    "-".into()
                } else {
                    chans.join(", ")
                }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(dir: &Path) -> Checks {
        for b in ["nic_drv", "ip_stack", "redis_port", "nic_switch"] {
            let p = dir.join(b);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Checks {
            cpus: vec![0, 1],
            net_admin: true,
            tap_absent: false,
            bin_dirs: vec![dir.to_path_buf()],
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fninit-script-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        d
    }

    const GOOD: &str = r#"<config control="ctl.sock" allow_uids="0, 1000">
  <start name="nic_drv">
    <affinity cpu="1"/>
    <config backend="tap" ifname="fnx0" queues="2" host_ip="10.77.0.1/24"/>
    <provides><service name="Nic"/></provides>
  </start>
  <start name="kv0_stack">
    <binary name="ip_stack"/>
    <config ip="10.77.0.10/24"><nftables file="etc/kv0.nft"/></config>
    <route><service name="Nic"><child name="nic_drv" queue="1"/></service></route>
    <provides><service name="Socket"/></provides>
  </start>
  <start name="kv1_stack">
    <binary name="ip_stack"/>
    <route><service name="Nic"><child name="nic_drv"/></service></route>
  </start>
  <start name="kv0">
    <binary name="redis_port"/>
    <route><service name="Socket"><child name="kv0_stack"/></service></route>
  </start>
</config>
"#;

    #[test]
    fn good_script_plans_instances_and_links() {
        let d = tmp();
        std::fs::write(d.join("etc/kv0.nft"), "table inet f {}\n").unwrap();
        let path = d.join("good.xml");
        let s = Script::parse(&path, GOOD, &checks(&d)).unwrap();
        assert_eq!(s.control_path, s.dir.join("ctl.sock"));
        assert_eq!(s.allow_uids, vec![0, 1000]);
        let kv0s = s.start("kv0_stack").unwrap();
        assert_eq!(
            kv0s.config_xml,
            r#"<config ip="10.77.0.10/24"><nftables file="etc/kv0.nft"/></config>"#
        );
        assert_eq!(
            kv0s.nftables,
            vec![NftSource::File(s.dir.join("etc/kv0.nft"))]
        );
        let tap = s.start("nic_drv").unwrap().tap.clone().unwrap();
        assert_eq!((tap.ifname.as_str(), tap.queues), ("fnx0", 2));
        let plan = Plan::new(&s);
        let names: Vec<&str> = plan.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["nic_drv#0", "nic_drv#1", "kv0_stack", "kv1_stack", "kv0"]
        );
        // kv0_stack pinned to queue 1; kv1_stack round-robin gets queue 0.
        let l = &plan.links[0];
        assert_eq!((l.provider, l.client), (1, 2));
        assert_eq!(
            (l.provider_label.as_str(), l.client_label.as_str()),
            ("nic:kv0_stack", "nic")
        );
        assert_eq!((plan.links[1].provider, plan.links[1].client), (0, 3));
        assert_eq!(plan.links[2].provider_label, "socket:kv0");
        let text = plan.describe(&s);
        assert!(
            text.lines()
                .any(|l| l.starts_with("nic_drv#1")
                    && l.ends_with("queue 1 channels: nic:kv0_stack=A")),
            "{text}"
        );
        assert!(text.contains("channels: nic=B, socket:kv0=A"), "{text}");
        std::fs::remove_dir_all(d).unwrap();
    }

    fn errors(xml: &str, c: &Checks) -> Vec<ScriptError> {
        Script::parse(Path::new("/x/s.xml"), xml, c).unwrap_err().0
    }

    #[test]
    fn manual_starts_need_no_binary_and_get_their_links() {
        let d = tmp();
        let c = checks(&d);
        let xml = r#"<config>
  <start name="s"><binary name="ip_stack"/><provides><service name="Socket"/></provides></start>
  <start name="client" attach="manual" allow_uids="0,65534">
    <route><service name="Socket"><child name="s"/></service></route>
  </start>
</config>"#;
        let script = Script::parse(&d.join("m.xml"), xml, &c).unwrap();
        let m = script.start("client").unwrap();
        assert!(m.manual && m.binary_path.is_none());
        assert_eq!(m.attach_uids.as_deref(), Some(&[0, 65534][..]));
        assert!(!script.start("s").unwrap().manual);
        let plan = Plan::new(&script);
        assert_eq!(plan.links.len(), 1);
        assert_eq!(plan.links[0].provider_label, "socket:client");
        assert!(plan.describe(&script).contains("(attach)"));
    }

    #[test]
    fn bad_manual_starts_name_the_line() {
        let d = tmp();
        let c = checks(&d);
        let cases = [
            (
                "<config>\n <start name=\"a\" attach=\"auto\"/>\n</config>",
                "attach=\"auto\" is not known",
            ),
            (
                "<config>\n <start name=\"a\" attach=\"manual\"><binary name=\"ip_stack\"/></start>\n</config>",
                "<binary> has no meaning",
            ),
            (
                "<config>\n <start name=\"a\" attach=\"manual\" user=\"0\"/>\n</config>",
                "user= has no meaning",
            ),
            (
                "<config>\n <start name=\"ip_stack\" allow_uids=\"0\"/>\n</config>",
                "needs attach=\"manual\"",
            ),
            (
                "<config>\n <start name=\"a\" attach=\"manual\" allow_uids=\"root\"/>\n</config>",
                "\"root\" is not a numeric user id",
            ),
        ];
        for (xml, want) in cases {
            let e = errors(xml, &c);
            assert!(
                e.iter().any(|e| e.line == 2 && e.message.contains(want)),
                "{xml}: {e:?}"
            );
        }
        // A route to a manual start: it provides nothing.
        let e = errors("<config>\n <start name=\"a\" attach=\"manual\"/>\n <start name=\"ip_stack\"><route><service name=\"Nic\"><child name=\"a\"/></service></route></start>\n</config>", &c);
        assert!(e.iter().any(|e| e.line == 3), "{e:?}");
    }

    #[test]
    fn bad_scripts_name_the_line() {
        let d = tmp();
        let c = checks(&d);
        let e = errors("<config>\n  <start name=\"a\">\n</config>", &c);
        assert_eq!(e[0].line, 3, "{}", e[0]);
        assert!(e[0].to_string().starts_with("/x/s.xml:3:"), "{}", e[0]);

        let e = errors(
            "<config>\n  <start name=\"a\"><binary name=\"nope\"/></start>\n</config>",
            &c,
        );
        assert_eq!((e[0].line, e[0].col), (2, 3));
        assert!(
            e[0].message.contains("binary \"nope\" not found"),
            "{}",
            e[0]
        );

        let e = errors("<config>\n <start name=\"x\"><binary name=\"ip_stack\"/>\n  <route><service name=\"Nic\"><child name=\"drv\"/></service></route></start>\n</config>", &c);
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("not started"), "{}", e[0]);

        let e = errors("<config>\n <start name=\"nic_drv\"/>\n <start name=\"x\"><binary name=\"ip_stack\"/>\n  <route><service name=\"Nic\"><child name=\"nic_drv\"/></service></route></start>\n</config>", &c);
        assert!(
            e[0].message
                .contains("does not provide it (no start provides it)"),
            "{}",
            e[0]
        );

        let e = errors(
            "<config>\n <start name=\"nic_drv\">\n  <affinity cpu=\"7\"/></start>\n</config>",
            &c,
        );
        assert_eq!((e[0].line, e[0].col), (3, 3));
        assert!(e[0].message.contains("CPU 7 is not available"), "{}", e[0]);

        let e = errors(
            "<config>\n <start name=\"nic_drv\"/>\n <start name=\"nic_drv\"/>\n</config>",
            &c,
        );
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("duplicate"));

        let mut c2 = c.clone();
        c2.net_admin = false;
        let e = errors("<config>\n <start name=\"nic_drv\">\n  <config backend=\"tap\" ifname=\"fn0\"/></start>\n</config>", &c2);
        assert_eq!(e[0].line, 2);
        assert!(
            e[0].message
                .contains("creating TAP device fn0 needs CAP_NET_ADMIN"),
            "{}",
            e[0]
        );

        let e = errors("<config>\n <start name=\"nic_drv\"><config queues=\"2\"/><provides><service name=\"Nic\"/></provides></start>\n <start name=\"s\"><binary name=\"ip_stack\"/><route><service name=\"Nic\"><child name=\"nic_drv\" queue=\"2\"/></service></route></start>\n</config>", &c);
        assert!(
            e[0].message
                .contains("queue 2 of \"nic_drv\" does not exist"),
            "{}",
            e[0]
        );

        let e = errors(
            "<config>\n <start name=\"nic_drv\" ram=\"1M\"/>\n</config>",
            &c,
        );
        assert!(e[0].message.contains("unknown attribute ram="), "{}", e[0]);
        let e = errors(
            "<config>\n <start name=\"nic_drv\" user=\"no-such-user-x\"/>\n</config>",
            &c,
        );
        assert!(e[0].message.contains("no user named"), "{}", e[0]);
        assert_eq!(resolve_user("65534:100"), Ok((65534, 100)));
        assert_eq!(resolve_user("42"), Ok((42, 42)));
        assert_eq!(resolve_user("root"), Ok((0, 0)));

        let e = errors("<config>\n <start name=\"nic_drv\"><config><nftables file=\"missing.nft\"/></config></start>\n</config>", &c);
        assert!(e[0].message.contains("cannot read rule file"), "{}", e[0]);
        std::fs::remove_dir_all(d).unwrap();
    }
}

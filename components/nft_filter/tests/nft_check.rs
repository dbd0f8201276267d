//! Every ruleset file of the project (`run/etc/*.nft`) and of this crate's
//! test data is accepted both by `nft_filter` and by the real `nft -c -f`,
//! and so is the text `list ruleset` prints for them (with counters).
//! Needs the `nft` binary (package `nftables`); `nft -c` needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

use nft_filter::{Filter, Hook, LinkType, PacketMeta};

fn nft_files() -> Vec<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [crate_dir.join("testdata"), crate_dir.join("../../run/etc")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "nft") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn nft_check(path: &Path) -> Result<(), String> {
    let out = Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run nft (apt-get install -y nftables): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn project_rulesets_are_valid_for_nft_and_for_us() {
    let files = nft_files();
    assert!(
        files.len() >= 3,
        "expected the crate's test data at least: {files:?}"
    );
    let tmp = std::env::temp_dir().join(format!("nft_filter_check_{}.nft", std::process::id()));
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if let Err(e) = nft_check(f) {
            panic!("nft -c rejects {}: {e}", f.display());
        }
        let mut filter = Filter::new(64);
        if let Err(e) = filter.replace(&text) {
            panic!("{}:{e}", f.display());
        }
        // Move some counters, then check that the listing is valid too.
        let pkt = [
            0x45u8, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 77, 0, 2, 10, 77, 0, 10, 0x30, 0x39,
            0x18, 0xeb, 0, 8, 0, 0,
        ];
        filter.evaluate(Hook::Input, LinkType::Ip, &pkt, &PacketMeta::default(), 1);
        let listing = filter.list_ruleset();
        std::fs::write(&tmp, &listing).unwrap();
        if let Err(e) = nft_check(&tmp) {
            panic!(
                "nft -c rejects our listing of {}: {e}\n{listing}",
                f.display()
            );
        }
        let mut again = Filter::new(64);
        again.replace(&listing).unwrap();
        assert_eq!(
            again.list_ruleset(),
            listing,
            "listing of {} does not round-trip",
            f.display()
        );
    }
    let _ = std::fs::remove_file(&tmp);
    println!("checked {} ruleset files with nft -c", files.len());
}

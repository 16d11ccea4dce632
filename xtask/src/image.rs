//! The guest image: built once from Debian packages, cached outside the clone, keyed on the
//! recipe's content so that a changed recipe builds a new image and an unchanged one is reused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{setup, sh};

/// The base image's file (and volume) name in the image directory.
pub const BASE_VOLUME: &str = "base.qcow2";
/// The kernel command line the image boots with (direct kernel boot, no boot loader).
pub const KERNEL_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 net.ifnames=0";

/// A built guest image and what it takes to boot it.
pub struct GuestImage {
    /// Its directory: base.qcow2, vmlinuz, initrd.img, id_ed25519(.pub).
    pub dir: PathBuf,
}

impl GuestImage {
    /// The qcow2 base image.
    pub fn base(&self) -> PathBuf {
        self.dir.join(BASE_VOLUME)
    }
}

/// A short stable digest of files' content.
pub fn content_key(files: &[&Path]) -> Result<String> {
    let mut args = vec![];
    for file in files {
        args.push(file.to_str().context("non-UTF-8 path")?);
    }
    let sums = sh::output("sha256sum", &args)?;
    let mut digest_input = String::new();
    for line in sums.lines() {
        digest_input.push_str(line.split_whitespace().next().unwrap_or(""));
    }
    let tmp = std::env::temp_dir().join(format!("virtfarm-key-{}", std::process::id()));
    std::fs::write(&tmp, digest_input)?;
    let key = sh::output("sha256sum", &[tmp.to_str().context("non-UTF-8 temp dir")?]);
    std::fs::remove_file(&tmp)?;
    Ok(key?.chars().take(12).collect())
}

/// The cached image for the current recipe, built first when there is none.
pub fn ensure(root: &Path) -> Result<GuestImage> {
    let recipe = root.join("xtask/guest/build-image.sh");
    let key = content_key(&[&recipe])?;
    let dir = setup::cache_dir().join(format!("images/bookworm-{key}"));
    let image = GuestImage { dir };
    if image.base().exists() {
        eprintln!("guest image: cached at {}", image.dir.display());
        return Ok(image);
    }
    let building = image.dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)?;
    let started = std::time::Instant::now();
    sh::run(
        "bash",
        &[recipe.to_str().context("non-UTF-8 path")?, building.to_str().context("non-UTF-8 path")?, &mirror()],
    )?;
    // Only a complete build gets the final name: an interrupted one is never mistaken for a cache hit.
    std::fs::rename(&building, &image.dir)?;
    eprintln!("guest image: built in {:.0} s at {}", started.elapsed().as_secs_f64(), image.dir.display());
    Ok(image)
}

/// The Debian mirror this host's apt already uses.
fn mirror() -> String {
    let from_sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string())));
    let from_list = || {
        std::fs::read_to_string("/etc/apt/sources.list").ok().and_then(|s| {
            s.lines()
                .filter(|l| l.starts_with("deb ") && !l.contains("security"))
                .find_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
    };
    from_sources.or_else(from_list).unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

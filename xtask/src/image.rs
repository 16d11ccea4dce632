//! The guest images: built once from Debian packages, cached outside the clone, each keyed on
//! its recipe's content so that a changed recipe builds a new image and an unchanged one is reused.
//! The bootable disk is what users bring; the direct-kernel image boots faster (no firmware, no
//! boot loader, no first-boot cloud-init), for the tests that boot many guests. A bullseye root
//! directory, built and cached the same way, is where the tests run the shipped binaries on an
//! older glibc. The LXD images (xtask/guest/build-lxd-images.sh) are made from busybox-static
//! and that bullseye root.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{apt, setup, sh};

/// The base image's file (and volume) name in the image directory.
pub const BASE_VOLUME: &str = "base.qcow2";

/// The built guest images.
pub struct GuestImage {
    /// The direct-kernel image's directory: base.qcow2, vmlinuz, initrd.img, id_ed25519(.pub).
    pub dir: PathBuf,
    /// The bootable disk (BIOS and UEFI boot loaders, no user or key of ours), in a directory of its own.
    pub bootable: PathBuf,
    /// A Debian bullseye root directory (glibc 2.31, libvirt0, python3), not a disk: the tests
    /// run the shipped binaries in it with chroot.
    pub bullseye_root: PathBuf,
}

impl GuestImage {
    /// The qcow2 base image.
    pub fn base(&self) -> PathBuf {
        self.dir.join(BASE_VOLUME)
    }

    /// The bootable disk's volume name in the images pool: its cache directory's name, so that
    /// a changed recipe gives a new volume beside the old one.
    pub fn bootable_volume(&self) -> Result<String> {
        let dir = self.bootable.parent().and_then(Path::file_name).context("bootable image without a directory")?;
        Ok(format!("{}.qcow2", dir.to_string_lossy()))
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
    // Per thread: the images' keys are taken side by side.
    let tmp =
        std::env::temp_dir().join(format!("virtfarm-key-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::write(&tmp, digest_input)?;
    let key = sh::output("sha256sum", &[tmp.to_str().context("non-UTF-8 temp dir")?]);
    std::fs::remove_file(&tmp)?;
    Ok(key?.chars().take(12).collect())
}

/// The cached images for the current recipes, built first (side by side) when there are none.
pub fn ensure(root: &Path) -> Result<GuestImage> {
    let debootstrap = |recipe, prefix, product| cached(root, recipe, prefix, product, || Ok(vec![apt::mirror()?]));
    let (dir, bootable, bullseye) = std::thread::scope(|scope| {
        let bootable = scope.spawn(|| debootstrap("build-bootable-image.sh", "bookworm-bootable", "bootable.qcow2"));
        let bullseye = scope.spawn(|| debootstrap("build-bullseye-root.sh", "bullseye-root", "root/usr/bin/python3"));
        let direct = debootstrap("build-image.sh", "bookworm", BASE_VOLUME);
        let joined = |build: std::thread::ScopedJoinHandle<'_, Result<PathBuf>>, what: &str| {
            build.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the {what}'s build panicked")))
        };
        (direct, joined(bootable, "bootable image"), joined(bullseye, "bullseye root"))
    });
    Ok(GuestImage { dir: dir?, bootable: bootable?.join("bootable.qcow2"), bullseye_root: bullseye?.join("root") })
}

/// The directory of the LXD images (busybox.tar.gz, python.tar), built from the bullseye root.
pub fn ensure_lxd(root: &Path, image: &GuestImage) -> Result<PathBuf> {
    // The bullseye root's directory name carries its recipe's key: a new root, new images.
    let bullseye =
        image.bullseye_root.parent().and_then(Path::file_name).context("bullseye root without a directory")?;
    let prefix = format!("lxd-{}", bullseye.to_string_lossy());
    let root_arg = image.bullseye_root.to_str().context("non-UTF-8 path")?.to_string();
    cached(root, "build-lxd-images.sh", &prefix, "python.tar", || Ok(vec![root_arg]))
}

/// The directory a recipe in xtask/guest builds `product` into, keyed on the recipe's content;
/// the recipe gets the directory and `args` (asked for only when it runs).
fn cached(
    root: &Path,
    recipe: &str,
    prefix: &str,
    product: &str,
    args: impl FnOnce() -> Result<Vec<String>>,
) -> Result<PathBuf> {
    let recipe = root.join("xtask/guest").join(recipe);
    let key = content_key(&[&recipe])?;
    let dir = setup::cache_dir().join(format!("images/{prefix}-{key}"));
    if dir.join(product).exists() {
        eprintln!("guest image: cached at {}", dir.display());
        return Ok(dir);
    }
    let args = args()?;
    let building = dir.with_extension("building");
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building)?;
    let started = std::time::Instant::now();
    let mut command = vec![recipe.to_str().context("non-UTF-8 path")?, building.to_str().context("non-UTF-8 path")?];
    command.extend(args.iter().map(String::as_str));
    sh::run("bash", &command)?;
    // Only a complete build gets the final name: an interrupted one is never mistaken for a cache hit.
    std::fs::rename(&building, &dir)?;
    eprintln!("guest image: built in {:.0} s at {}", started.elapsed().as_secs_f64(), dir.display());
    Ok(dir)
}

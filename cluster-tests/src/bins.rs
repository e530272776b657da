//! Finds the built `ctld` and `ctl`. Test binaries cannot use `CARGO_BIN_EXE_*` for other
//! packages' binaries, so they look next to themselves in the workspace target dir.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The binaries a process-level test runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The controller node daemon.
    pub ctld: PathBuf,
    /// The operator's client.
    pub ctl: PathBuf,
}

impl Bins {
    /// `$STARLING_BIN_DIR` when set, else the nearest ancestor of the running executable that
    /// holds a `ctld` (for a test, `target/<profile>/deps/..` is `target/<profile>`).
    pub fn locate() -> Result<Self> {
        if let Some(dir) = std::env::var_os("STARLING_BIN_DIR") {
            return Self::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe().context("current_exe")?;
        for dir in exe.ancestors().skip(1) {
            if dir.join("ctld").is_file() {
                return Self::in_dir(dir);
            }
        }
        bail!(
            "no ctld next to {}: build the binaries first (`cargo build --bins`, which \
             scripts/test.sh does) or set STARLING_BIN_DIR",
            exe.display()
        )
    }

    fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            dir: dir.to_path_buf(),
            ctld: dir.join("ctld"),
            ctl: dir.join("ctl"),
        };
        if !bins.ctld.is_file() {
            bail!(
                "{} is missing: run `cargo build --bins`",
                bins.ctld.display()
            );
        }
        Ok(bins)
    }
}

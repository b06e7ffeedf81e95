//! Records the git commit the binary is built from, for `rosterd --version`
//! and the first line of `rosterd doctor`: `rosterd 0.1.0 (3f2a9c1d4e5b)`,
//! or `(3f2a9c1d4e5b-dirty)` when the sources compiled in (`COMPILED_IN`)
//! differ from that commit.
//!
//! Sets, for `env!()`, `ROSTERD_COMMIT` (the id) and `ROSTERD_VERSION`
//! (`0.1.0 (3f2a9c1d4e5b)`: what `--version` prints after the name). The
//! commit is "unknown" when there is no git checkout (a source tarball, a
//! vendored copy) or no `git` program.
//! A packager building from a tarball may set `ROSTERD_BUILD_COMMIT` to
//! the commit the tarball was made from; it then wins over git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ROSTERD_BUILD_COMMIT");
    let commit = match std::env::var("ROSTERD_BUILD_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=ROSTERD_COMMIT={commit}");
    println!("cargo:rustc-env=ROSTERD_VERSION={version} ({commit})");
}

/// What goes into the binary: the sources, and the files they
/// `include_str!`.
const COMPILED_IN: &[&str] = &[
    "build.rs",
    "Cargo.toml",
    "Cargo.lock",
    "src",
    "schema.sql",
    "admin",
    "docs/openapi.json",
];

/// The short commit id, with "-dirty" when a source compiled in is modified;
/// None when this source tree is not a git checkout of its own.
fn from_git() -> Option<String> {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // Only this crate's own checkout: an unpacked tarball that happens to
    // sit inside some other repository must not take that one's commit.
    if !root.join(".git").exists() {
        return None;
    }
    let commit = git(&root, &["rev-parse", "--short=12", "HEAD"])?;

    // Run again when HEAD moves: a commit or a checkout changes HEAD or
    // the branch it names (a loose ref, or packed-refs after `git gc`).
    let mut watched = vec![git_path(&root, "HEAD")];
    if let Some(branch) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_path(&root, &branch));
    }
    watched.push(git_path(&root, "packed-refs"));
    for path in watched.into_iter().flatten() {
        // A path that does not exist would make cargo run this every time.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    // ... and when what is compiled in changes, to keep "-dirty" right.
    // (Not the index: `git status` rewrites it, and every rerun rebuilds
    // the crate.)
    let sources: Vec<&str> = COMPILED_IN
        .iter()
        .copied()
        .filter(|source| root.join(source).exists())
        .collect();
    for source in &sources {
        println!("cargo:rerun-if-changed={source}");
    }

    // `git diff --quiet HEAD` exits 1 when a tracked file among the
    // sources differs from the commit (staged or not); untracked files and
    // files not compiled in (tests, docs) do not count.
    let dirty = Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .args(&sources)
        .current_dir(&root)
        .status()
        .ok()
        .and_then(|status| status.code())
        == Some(1);
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Where git keeps `name` (handles worktrees, whose HEAD and refs live in
/// different directories).
fn git_path(root: &Path, name: &str) -> Option<PathBuf> {
    git(root, &["rev-parse", "--git-path", name]).map(|p| root.join(p))
}

/// The trimmed stdout of a successful git command.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

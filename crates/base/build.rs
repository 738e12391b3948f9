//! Stamps the build with the target triple and the commit it was built from. (The version is
//! stamped by each binary, `build_info::stamp_version!`: a build of another version then compiles
//! the binary again, not every library under it.)

use std::process::Command;

fn main() {
    // The commit changes with HEAD; in a worktree, HEAD is not under the checkout's `.git`.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]).filter(|h| std::path::Path::new(h).exists()) {
        println!("cargo:rerun-if-changed={head}");
    }
    println!("cargo:rustc-env=EDGE_AGENT_TARGET={}", std::env::var("TARGET").unwrap());
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EDGE_AGENT_COMMIT={commit}");
}

/// What `git <args>` prints, run in this crate's directory; None without git or a repository.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = std::path::Path::new(&text);
    // `--git-path` answers relative to the current directory.
    Some(if args.contains(&"--git-path") && path.is_relative() {
        std::env::current_dir().ok()?.join(path).display().to_string()
    } else {
        text
    })
}

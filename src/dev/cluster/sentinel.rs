//! A tiny `/bin/sh` watcher per cluster that SIGKILLs the cluster's peers
//! (and removes a throwaway dir) once the owning process is gone, so peers
//! never outlive a test binary that was SIGKILLed, aborted, or held its
//! cluster in a `static` (statics are never dropped). `Drop` stays the normal
//! path; the sentinel is killed there.
//!
//! It only kills processes listed in `<dir>/run/*.pid` whose working
//! directory is inside `<dir>`, so a recycled pid is never hit.

use std::path::Path;
use std::process::{Child, Command, Stdio};

const SCRIPT: &str = r#"
owner="$1"; dir="$2"; keep="$3"
alive() {
  [ -r "/proc/$owner/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$owner/status" 2>/dev/null
}
while alive; do sleep 1; done
for f in "$dir"/run/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null)
  case "$pid" in ''|*[!0-9]*) continue ;; esac
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
  case "$cwd" in "$dir"/*) kill -KILL "$pid" 2>/dev/null ;; esac
done
if [ "$keep" != 1 ] && [ -f "$dir/.temporary" ]; then
  sleep 1
  rm -rf "$dir"
fi
"#;

/// Starts the watcher for `dir`, owned by this process. `None` when it cannot
/// run (no `/bin/sh` or no `/proc`); clusters still work, only without the
/// safety net.
pub fn spawn(dir: &Path, keep_dir: bool) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    if !Path::new("/proc/self/status").exists() {
        return None;
    }
    Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("rmq-devcluster-sentinel")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(if keep_dir { "1" } else { "0" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C aimed at the test run must not take
        // the watcher down before it has done its job.
        .process_group(0)
        .spawn()
        .ok()
}

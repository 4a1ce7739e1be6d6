//! The web UI is embedded with `include_dir!`, which Cargo does not track: rebuild the server
//! whenever a file under `web/static/` changes, so tests never run a stale UI.

fn main() {
    println!("cargo:rerun-if-changed=../../web/static");
}

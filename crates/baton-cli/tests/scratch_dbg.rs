mod common;
#[test]
fn dbg_leak() {
    let w = common::World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    let sid = w.new_session(0, &ws);
    w.send(0, &sid, "hello");
    let missing = format!("{}/MISSINGDIR-CANARY-8812/ws", w.tmp.path().display());
    let (rc, h) = w.handoff(0, &sid, "desktop", &["--path", &missing]);
    println!("RC {rc} H {h}");
    let out = w.c.baton(0, &["--json", "handoff", &sid, "--to", "desktop", "--path", &missing]).unwrap();
    println!("STDOUT<<{}>>\nSTDERR<<{}>>\nCODE {:?}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr), out.status.code());
    let log = std::fs::read_to_string(w.c.log_path("server")).unwrap();
    for l in log.lines().filter(|l| l.contains("MISSINGDIR")) { println!("LOG: {l}"); }
}

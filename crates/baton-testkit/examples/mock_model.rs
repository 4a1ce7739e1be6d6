//! Runs the mock model server until killed and prints its URL; dumps requests to a directory given as argument.
fn main() -> std::io::Result<()> {
    let server = baton_testkit::model::ModelServer::start()?;
    println!("{}", server.base_url());
    let dir = std::env::args().nth(1);
    let mut seen = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let reqs = server.requests();
        for (i, r) in reqs.iter().enumerate().skip(seen) {
            eprintln!("{} {}?{}", r.method, r.path, r.query);
            if let Some(d) = &dir {
                let v = serde_json::json!({"method": r.method, "path": r.path, "headers": r.headers, "body": r.body});
                std::fs::write(
                    format!("{d}/{i:03}.json"),
                    serde_json::to_string_pretty(&v)?,
                )?;
            }
        }
        seen = reqs.len();
    }
}

//! `fieldsync-bench`: the benchmark harness; `bench/run.sh` builds the release
//! binaries and runs it. The work is in `fieldsync::testkit::bench`.
//!
//!   fieldsync-bench [DIR] [--from-results]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let from_results = args.iter().any(|a| a == "--from-results");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("bench", String::as_str);
    fieldsync::testkit::bench::runner::run(std::path::Path::new(dir), from_results);
}

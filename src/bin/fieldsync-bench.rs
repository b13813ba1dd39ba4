//! `fieldsync-bench`: the benchmark harness; `bench/run.sh` builds the release
//! binaries and runs it. The work is in `fieldsync::testkit::bench`.
//!
//!   fieldsync-bench [DIR] [--from-results]
//!   fieldsync-bench [DIR] --compare N
//!   fieldsync-bench [DIR] --fleet N[,N…] [--postgres postgres://USER@HOST/DB]
//!   fieldsync-bench --size N

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Only the fleet bench (issue 31), merged into DIR's results.
    if let Some(i) = args.iter().position(|a| a == "--fleet") {
        let sizes: Vec<usize> = args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        if sizes.is_empty() {
            eprintln!("fieldsync-bench: --fleet needs site counts, e.g. --fleet 100,1000");
            std::process::exit(2);
        }
        args.drain(i..i + 2);
        let postgres = match args.iter().position(|a| a == "--postgres") {
            Some(p) => {
                let Some(url) = args.get(p + 1).cloned() else {
                    eprintln!("fieldsync-bench: --postgres needs a base URL, e.g. postgres://fieldsync@127.0.0.1:55432/postgres");
                    std::process::exit(2);
                };
                args.drain(p..p + 2);
                Some(url)
            }
            None => None,
        };
        let dir = args.first().map_or("bench", String::as_str);
        fieldsync::testkit::bench::runner::fleet_only(
            std::path::Path::new(dir),
            &sizes,
            postgres.as_deref(),
        );
        return;
    }
    // One push and one pull of N records, printed and not merged: the quick
    // before/after figure of a change to the central's push or pull path.
    if let Some(i) = args.iter().position(|a| a == "--size") {
        let Some(n) = args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) else {
            eprintln!("fieldsync-bench: --size needs a record count, e.g. --size 10000");
            std::process::exit(2);
        };
        fieldsync::testkit::bench::runner::size_only(n);
        return;
    }
    // Only the comparison with the central (issue 30), merged into DIR's results.
    if let Some(i) = args.iter().position(|a| a == "--compare") {
        let Some(n) = args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) else {
            eprintln!("fieldsync-bench: --compare needs a record count, e.g. --compare 100000");
            std::process::exit(2);
        };
        args.drain(i..i + 2);
        let dir = args.first().map_or("bench", String::as_str);
        fieldsync::testkit::bench::runner::compare_only(std::path::Path::new(dir), n);
        return;
    }
    if let Some(other) = args
        .iter()
        .find(|a| a.starts_with('-') && *a != "--from-results")
    {
        // --help included: the run writes hundreds of MB; never start it by mistake.
        if other != "--help" && other != "-h" {
            eprintln!("fieldsync-bench: unknown option {other}");
        }
        eprintln!(
            "usage: fieldsync-bench [DIR] [--from-results]\n  runs the 1k/10k/100k benchmark into DIR \
             (default bench/): several minutes and ~700 MB of temporary files;\n  \
             --from-results: only redraw the report and plot from DIR's results"
        );
        std::process::exit(if other == "--help" || other == "-h" {
            0
        } else {
            2
        });
    }
    let from_results = args.iter().any(|a| a == "--from-results");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or("bench", String::as_str);
    fieldsync::testkit::bench::runner::run(std::path::Path::new(dir), from_results);
}

//! Prints every Potluck CRD as one multi-document YAML file:
//! `cargo run --bin crdgen > deploy/crds.yaml`.

use std::io::Write;

fn main() {
    let yaml = match potluck_api::crds_yaml() {
        Ok(yaml) => yaml,
        Err(err) => {
            eprintln!("crdgen: {err}");
            std::process::exit(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout
        .write_all(yaml.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("crdgen: cannot write to standard output: {err}");
        std::process::exit(1);
    }
}

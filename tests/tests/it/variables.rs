//! Every flag of every service binary as built reads the variable the harness derives for it
//! ([`service_env`]: `AURORA_<SERVICE>_<FLAG>` for a service's own flag, `AURORA_<FLAG>` for
//! a shared one), so a test that passes a flag name reaches the flag it means.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aurora_testkit::prelude::*;
use aurora_testkit::process::binary_flags;

#[test]
fn every_flag_of_every_service_reads_the_variable_the_rule_names() {
    let mut wrong = Vec::new();
    for svc in Svc::ALL {
        let flags = binary_flags(svc);
        assert!(
            flags.contains_key("namespace") && flags.contains_key("ops-addr"),
            "{svc}: the shared flags are missing from --help: {flags:?}"
        );
        for (flag, var) in &flags {
            if matches!(flag.as_str(), "help" | "version") {
                continue;
            }
            let want = service_env(svc, flag);
            match var {
                Some(var) if *var == want => {}
                other => wrong.push(format!(
                    "{svc} --{flag}: reads {other:?}, the rule says {want}"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

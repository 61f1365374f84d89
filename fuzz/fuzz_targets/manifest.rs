//! The manifest loader and the compiler behind `sluice local`, `render` and
//! `check`: any YAML text, every ProviderIntegration in it compiled. Bad
//! input must come back as errors naming the field, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use sluice_operator::compile::{MountedSecrets, compile};
use sluice_operator::manifest::Manifests;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut manifests = Manifests::default();
    let mut errors = Vec::new();
    manifests.add(Path::new("fuzz.yaml"), text, &mut errors);
    let secrets = MountedSecrets {
        root: PathBuf::from("/var/run/sluice/secrets"),
    };
    for (_, integration) in &manifests.integrations {
        let _ = compile(integration, &secrets);
    }
});

//! `durakv-powercut`: power cuts of a real three-node cluster whose disks are FUSE mounts of the
//! simulated disk (`durakv-disk`), judged by the simulation's checkers. See `durakv_sim::powercut`
//! and `make powercut`. It drives real processes, so it exists only in the normal build.

use std::process::ExitCode;

#[cfg(not(madsim))]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    durakv_sim::powercut::main(&args)
}

#[cfg(madsim)]
fn main() -> ExitCode {
    println!(
        "durakv-powercut drives real processes and is not part of the simulation build: build it without \
         --cfg madsim (make powercut)"
    );
    ExitCode::SUCCESS
}

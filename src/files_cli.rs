//! `maxd files ...`: the file relay's command-line client.

use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload a file; prints its id as the last line. Run again to resume.
    Upload {
        /// File to upload.
        path: std::path::PathBuf,
    },
}

pub fn run(_cfg: &Config, _cmd: FilesCommand) -> anyhow::Result<()> {
    anyhow::bail!("the file relay client is not built yet")
}

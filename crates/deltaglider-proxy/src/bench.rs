//! The `bench` subcommand (filled in below).

use crate::error::ProxyError;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Directory with successive artifacts (sorted by name = version order).
    #[arg(long)]
    pub corpus: std::path::PathBuf,
}

pub async fn run(_args: BenchArgs) -> Result<(), ProxyError> {
    Err(ProxyError::Internal("not yet".into()))
}

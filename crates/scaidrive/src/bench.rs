//! `scaidrive bench upload`: throughput and latency figures beside a `dd` baseline.

pub async fn upload(_size_mib: u64, _parallel: usize, _items: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

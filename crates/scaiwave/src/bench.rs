pub async fn run(_m: usize, _r: usize, _i: usize, _b: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
